from django.core.management.commands.migrate import Command as DjangoMigrate

from safemigrate.management.migrate import ContractMixin


class Command(ContractMixin, DjangoMigrate):
    help = (
        "Apply the contract migrations that `migrate` held back (after the deploy, once no old "
        "code runs), and whatever follows them."
    )
