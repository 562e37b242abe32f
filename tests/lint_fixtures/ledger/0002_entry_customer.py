# A cross-app foreign key: Python-only edits (no SQL), then the relation is
# turned into a plain integer (a column rename and a type change).
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial")]

    operations = [
        migrations.AlterField("entry", "customer", models.ForeignKey(
            "billing.customer", models.PROTECT, related_name="entries")),
        migrations.AlterField("entry", "customer", models.IntegerField()),
    ]
