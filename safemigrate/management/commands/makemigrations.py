from django.core.management.commands.makemigrations import Command as DjangoMakemigrations

from safemigrate.management.makemigrations import SafeMakemigrationsMixin


class Command(SafeMakemigrationsMixin, DjangoMakemigrations):
    pass
