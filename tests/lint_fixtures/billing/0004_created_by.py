# Foreign-key edits: a retarget to another table with the same key type (SQL:
# the constraint is dropped and re-validated), a default added (Django still
# re-creates the constraint), and Python-only edits (no SQL at all).
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_number_not_unique")]

    operations = [
        migrations.AlterField("invoice", "created_by", models.ForeignKey(
            "billing.staff", models.SET_NULL, null=True, related_name="+")),
        migrations.AlterField("invoice", "created_by", models.ForeignKey(
            "billing.staff", models.PROTECT, null=True, related_name="invoices_created",
            verbose_name="created by", help_text="Who issued it")),
        migrations.AlterField("invoice", "created_by", models.ForeignKey(
            "billing.staff", models.PROTECT, null=True, default=1, related_name="invoices_created",
            verbose_name="created by", help_text="Who issued it")),
    ]
