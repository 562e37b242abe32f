# A small invoicing app as a real project would start it: everything here
# creates new tables, so nothing in this migration is risky.
import uuid

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    operations = [
        migrations.CreateModel("Customer", [
            ("id", models.BigAutoField(primary_key=True)),
            ("name", models.CharField(max_length=100)),
        ]),
        migrations.CreateModel("Account", [
            ("id", models.UUIDField(primary_key=True, default=uuid.uuid4)),
            ("label", models.CharField(max_length=100)),
        ]),
        migrations.CreateModel("Staff", [
            ("id", models.BigAutoField(primary_key=True)),
            ("email", models.EmailField(max_length=254)),
        ]),
        migrations.CreateModel("Coupon", [
            ("id", models.BigAutoField(primary_key=True)),
            ("code", models.CharField(max_length=12)),
        ]),
        migrations.CreateModel("Invoice", [
            ("id", models.BigAutoField(primary_key=True)),
            ("customer", models.ForeignKey("billing.customer", models.CASCADE)),
            ("created_by", models.ForeignKey("billing.customer", models.SET_NULL, null=True,
                                             related_name="+")),
            ("number", models.CharField(max_length=20, unique=True, db_index=True)),
            ("amount", models.IntegerField(null=True)),
            ("note", models.CharField(max_length=50, blank=True)),
            ("status", models.CharField(max_length=10, choices=[("draft", "Draft"), ("sent", "Sent")])),
        ]),
        migrations.AddIndex("invoice", models.Index(fields=["status"], name="invoice_status")),
        migrations.CreateModel("LegacyRate", [
            ("id", models.AutoField(primary_key=True)),
            ("rate", models.IntegerField()),
        ], options={"managed": False, "db_table": "legacy_rates"}),
    ]
