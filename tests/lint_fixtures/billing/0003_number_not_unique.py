# Invoice numbers stop being unique (several branches issue them) but stay
# indexed: Django drops the unique constraint and builds a plain index.
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_invoice_payer")]

    operations = [
        migrations.AlterField("invoice", "number", models.CharField(max_length=20, db_index=True)),
    ]
