"""``makemigrations --safe`` as a mixin over Django's command.

With ``--safe`` the command uses ``SafeMigrationAutodetector`` (each risky
change becomes expand + contract migrations) and ``StagedMigrationWriter``
(stage markers and comments in the files). Without it the command is
Django's, plus a warning on stderr for each risky operation it generated.

Other apps extend the autodetector too: django-pgtrigger (a dependency of
safemigrate, so in every project) sets ``makemigrations.Command.autodetector``
to a subclass that turns ``Meta.triggers`` into ``AddTrigger`` operations.
Replacing that attribute with our own class would silently drop every such
extension (trigger changes would go undetected, and models declaring
triggers would fail to serialize). So both of our autodetectors are built
per run on top of whatever class the command carries, as the first base of
a new class: our ``changes`` and rewrite rules run, and every ``super()``
call reaches the inherited extensions before Django's code.
"""

import contextlib

from django.core.management.base import CommandError
from django.core.management.commands import makemigrations as django_makemigrations
from django.db.migrations.autodetector import MigrationAutodetector

from ..planning.autodetector import SafeMigrationAutodetector, UnsafeChange, risky_operations
from ..planning.releases import ReleaseAwareArrangement
from ..planning.writer import StagedMigrationWriter


class WarningAutodetectorMixin:
    """Remembers what the autodetector produced, for the risky-operation warnings."""

    produced = None

    def changes(self, *args, **kwargs):
        changes = super().changes(*args, **kwargs)
        type(self).produced = (changes, self.from_state)
        return changes


def inherited_autodetector(command_class):
    """The autodetector class ``command_class`` would use without safemigrate.

    That is Django's ``MigrationAutodetector`` or a subclass another app
    installed on the command class (or, the pre-5.2 hook, in the command's
    module), whichever is more derived.
    """
    detector = getattr(command_class, "autodetector", None) or MigrationAutodetector
    module_level = getattr(django_makemigrations, "MigrationAutodetector", detector)
    if issubclass(module_level, detector):
        detector = module_level
    return detector


def compose_autodetector(mixin, base, name):
    """A class running ``mixin`` over ``base`` (``base`` unchanged when it already has it)."""
    if issubclass(base, mixin):
        return base
    return type(name, (mixin, base), {"__module__": __name__})


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
        base = inherited_autodetector(type(self))
        if options.get("safe") and options.get("update"):
            raise CommandError(
                "makemigrations --safe --update is refused: --update appends the new operations to the latest "
                "migration and lets Django's optimizer merge them, which would put contract steps into a "
                "migration `migrate` applies before the deploy and fold safe steps into plain ones that take "
                "long locks. Run makemigrations --safe without --update (it writes a new expand/contract pair), "
                "or delete the unapplied latest migration and run makemigrations --safe again.")
        if options.get("safe"):
            self.autodetector = compose_autodetector(SafeMigrationAutodetector, base, "SafeMigrationAutodetector")
            try:
                with _writer_in_django_makemigrations(StagedMigrationWriter):
                    return super().handle(*app_labels, **options)
            except UnsafeChange as exc:
                raise CommandError(str(exc)) from exc
        # A fresh class per run: ``produced`` is per run, never shared.
        detector = type("WarningAutodetector", (WarningAutodetectorMixin, ReleaseAwareArrangement, base),
                        {"__module__": __name__})
        self.autodetector = detector
        result = super().handle(*app_labels, **options)
        if detector.produced and options["verbosity"] >= 1:
            changes, from_state = detector.produced
            findings = list(risky_operations(changes, from_state))
            for where, finding in findings:
                self.stderr.write(self.style.WARNING(f"{where}: {finding}"))
            if findings:
                self.stderr.write("Run `makemigrations --safe` to generate zero-downtime expand/contract migrations.")
        return result
