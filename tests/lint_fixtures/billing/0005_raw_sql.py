# Hand-written SQL, one statement shape per operation, risky and harmless.
from django.db import migrations

FUNCTION = """
CREATE OR REPLACE FUNCTION billing_touch() RETURNS trigger AS $body$
BEGIN
    NEW.note := 'touched; DROP TABLE billing_invoice';  -- not a statement
    RETURN NEW;
END
$body$ LANGUAGE plpgsql;
"""


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("billing", "0004_created_by")]

    operations = [
        migrations.RunSQL("ALTER TABLE billing_invoice ADD COLUMN region varchar(8) NOT NULL;"),
        migrations.RunSQL("CREATE INDEX invoice_amount_idx ON billing_invoice (amount);"),
        migrations.RunSQL('ALTER TABLE "billing_invoice" ADD CONSTRAINT amount_positive CHECK (amount > 0);'),
        migrations.RunSQL("ALTER TABLE billing_invoice ALTER COLUMN amount TYPE bigint;"),
        migrations.RunSQL("ALTER TABLE billing_invoice ALTER COLUMN amount SET NOT NULL;"),
        migrations.RunSQL("ALTER TABLE billing_coupon DROP COLUMN code;"),
        migrations.RunSQL("DROP TABLE IF EXISTS billing_staff CASCADE;"),
        migrations.RunSQL("ALTER TABLE billing_invoice RENAME COLUMN note TO memo;"),
        migrations.RunSQL("LOCK TABLE billing_invoice IN ACCESS EXCLUSIVE MODE;"),
        migrations.RunSQL("UPDATE billing_invoice SET status = 'draft';"),
        migrations.RunSQL("DELETE FROM billing_coupon;"),
        migrations.RunSQL("DROP INDEX invoice_status;"),
        # Harmless ones: concurrent builds, NOT VALID, targeted updates, new tables.
        migrations.RunSQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS invoice_amount_c ON billing_invoice (amount);"),
        migrations.RunSQL("ALTER TABLE billing_invoice ADD CONSTRAINT amount_nonneg CHECK (amount >= 0) NOT VALID;"
                          " ALTER TABLE billing_invoice VALIDATE CONSTRAINT amount_nonneg;"),
        migrations.RunSQL("UPDATE billing_invoice SET status = 'sent' WHERE id = 1;"),
        migrations.RunSQL("INSERT INTO billing_coupon (code) VALUES ('WELCOME');", reverse_sql=migrations.RunSQL.noop),
        migrations.RunSQL("CREATE TABLE billing_audit (id bigserial PRIMARY KEY, body text NOT NULL);"
                          "CREATE INDEX billing_audit_body ON billing_audit (body);"
                          "ALTER TABLE billing_audit ADD COLUMN actor text NOT NULL;"),
        migrations.RunSQL(FUNCTION),
        migrations.RunSQL("-- ALTER TABLE billing_invoice DROP COLUMN amount;\nSELECT 1;"),
        migrations.RunSQL("ALTER TABLE billing_invoice ADD COLUMN channel text DEFAULT 'web';"),
    ]
