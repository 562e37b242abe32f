# The customer relation becomes a "payer" pointing at Account, whose key is a
# UUID: the column changes from bigint to uuid. A rename, then a rewrite.
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [
        migrations.RenameField("invoice", "customer", "payer"),
        migrations.AlterField("invoice", "payer", models.ForeignKey("billing.account", models.CASCADE)),
    ]
