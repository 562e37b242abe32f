# Changes that run no SQL, or only instant SQL: none of them may be reported
# as errors. The data migration inserts one row.
from django.core import validators
from django.db import migrations, models


def add_default_coupon(apps, schema_editor):
    apps.get_model("billing", "Coupon").objects.get_or_create(code="DEFAULT")


class Migration(migrations.Migration):
    dependencies = [("billing", "0005_raw_sql")]

    operations = [
        migrations.RunPython(add_default_coupon, migrations.RunPython.noop),
        migrations.AddField("invoice", "coupons", models.ManyToManyField("billing.coupon")),
        migrations.AddField("legacyrate", "currency", models.CharField(max_length=3)),
        migrations.AlterField("legacyrate", "rate", models.DecimalField(max_digits=8, decimal_places=2)),
        migrations.AlterField("invoice", "note", models.CharField(max_length=50, blank=True,
                                                                  help_text="Shown on the PDF")),
        migrations.AlterField("invoice", "status", models.CharField(
            max_length=10, choices=[("draft", "Draft"), ("sent", "Sent"), ("paid", "Paid")],
            verbose_name="state")),
        migrations.AlterField("invoice", "amount", models.IntegerField(
            null=True, default=0, validators=[validators.MinValueValidator(0)])),
        migrations.AlterField("invoice", "note", models.CharField(max_length=80, blank=True,
                                                                  help_text="Shown on the PDF")),
        migrations.RemoveIndex("invoice", "invoice_status"),
        # Hand-written SQL hidden in a state/database split: only the database half runs.
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.AlterField("invoice", "amount", models.IntegerField(
                null=True, default=0, db_index=True, validators=[validators.MinValueValidator(0)]))],
            database_operations=[migrations.RunSQL("CREATE INDEX invoice_amount ON billing_invoice (amount)")],
        ),
        migrations.SeparateDatabaseAndState(state_operations=[migrations.AlterField(
            "invoice", "status", models.CharField(max_length=10, db_index=True, choices=[
                ("draft", "Draft"), ("sent", "Sent"), ("paid", "Paid")], verbose_name="state"))]),
    ]
