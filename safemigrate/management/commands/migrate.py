from django.core.management.commands.migrate import Command as DjangoMigrate

from safemigrate.management.migrate import StagedMigrateMixin


class Command(StagedMigrateMixin, DjangoMigrate):
    help = (
        "Apply migrations up to, not including, contract migrations (the expand stage, safe "
        "while the old code still runs). Run `migrate_contract` after the deploy."
    )
