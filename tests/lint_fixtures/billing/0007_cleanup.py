# Plain Django changes every zero-downtime linter must catch.
import uuid

from django.contrib.postgres.constraints import ExclusionConstraint
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0006_harmless")]

    operations = [
        migrations.RemoveField("invoice", "note"),
        migrations.AddField("invoice", "due", models.DateField()),
        migrations.AddField("invoice", "reviewer", models.ForeignKey("billing.staff", models.SET_NULL, null=True)),
        migrations.AddField("invoice", "reference", models.CharField(max_length=20, null=True, unique=True)),
        migrations.AlterField("invoice", "amount", models.IntegerField(default=0)),
        migrations.AlterField("invoice", "status", models.IntegerField(default=0)),
        migrations.AddConstraint("invoice", models.CheckConstraint(condition=models.Q(amount__gte=0),
                                                                   name="invoice_amount_gte_0")),
        migrations.AddConstraint("invoice", models.UniqueConstraint(fields=["payer", "number"],
                                                                    name="invoice_payer_number")),
        migrations.AlterUniqueTogether("customer", {("name",)}),
        migrations.RenameModel("Coupon", "Voucher"),
        migrations.DeleteModel("Staff"),
        migrations.AlterModelTable("customer", "billing_clients"),
        migrations.AlterModelTable("account", None),  # already the default name: no SQL
        migrations.AddField("invoice", "token", models.UUIDField(default=uuid.uuid4)),
        migrations.AddConstraint("invoice", ExclusionConstraint(name="invoice_one_draft_per_payer",
                                                                expressions=[("payer", "=")],
                                                                condition=models.Q(status=0))),
    ]
