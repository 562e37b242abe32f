"""``makemigrations --safe`` as a mixin over Django's command.

With ``--safe`` the command uses ``SafeMigrationAutodetector`` (each risky
change becomes expand + contract migrations) and ``StagedMigrationWriter``
(stage markers and comments in the files). Without it the command is
Django's, plus a warning on stderr for each risky operation it generated.
"""

import contextlib

from django.core.management.base import CommandError
from django.core.management.commands import makemigrations as django_makemigrations
from django.db.migrations.autodetector import MigrationAutodetector

from .planning.releases import ReleaseAwareArrangement
from .autodetector import SafeMigrationAutodetector, UnsafeChange, risky_operations
from .writer import StagedMigrationWriter


class _WarningAutodetector(ReleaseAwareArrangement, MigrationAutodetector):
    """Django's autodetector, remembering what it produced for the warnings."""

    produced = None

    def changes(self, *args, **kwargs):
        changes = super().changes(*args, **kwargs)
        type(self).produced = (changes, self.from_state)
        return changes


@contextlib.contextmanager
def _writer_in_django_makemigrations(writer_class):
    original = django_makemigrations.MigrationWriter
    django_makemigrations.MigrationWriter = writer_class
    try:
        yield
    finally:
        django_makemigrations.MigrationWriter = original


class SafeMakemigrationsMixin:
    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--safe", action="store_true",
            help="Split each risky change into an expand migration (before the deploy) and a contract "
                 "migration (after it) so the site stays up during a rolling deploy.",
        )

    def handle(self, *app_labels, **options):
        if options.get("safe"):
            self.autodetector = SafeMigrationAutodetector
            try:
                with _writer_in_django_makemigrations(StagedMigrationWriter):
                    return super().handle(*app_labels, **options)
            except UnsafeChange as exc:
                raise CommandError(str(exc)) from exc
        detector = type("WarningAutodetector", (_WarningAutodetector,), {})
        self.autodetector = detector
        result = super().handle(*app_labels, **options)
        if detector.produced and options["verbosity"] >= 1:
            changes, from_state = detector.produced
            for where, finding in risky_operations(changes, from_state):
                self.stderr.write(self.style.WARNING(f"{where}: {finding}"))
            if any(True for _ in risky_operations(changes, from_state)):
                self.stderr.write("Run `makemigrations --safe` to generate zero-downtime expand/contract migrations.")
        return result
