from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = [("billing", "0001_initial")]

    operations = [
        migrations.CreateModel("Entry", [
            ("id", models.BigAutoField(primary_key=True)),
            ("customer", models.ForeignKey("billing.customer", models.CASCADE)),
        ]),
    ]
