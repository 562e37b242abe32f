from django.core.management.base import BaseCommand

from safemigrate.management.archive import ArchiveCommandMixin


class Command(ArchiveCommandMixin, BaseCommand):
    pass
