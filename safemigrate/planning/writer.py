"""Migration files that say which stage they belong to and why.

Django's writer renders only dependencies and operations. A safemigrate
migration also needs ``atomic = False`` (concurrent index builds, batched
backfills), ``stage = "contract"`` (so ``migrate`` holds it back), and a
comment telling the reader what the old code may still do meanwhile.
"""

from django.db.migrations.writer import MigrationWriter

CLASS_LINE = "class Migration(migrations.Migration):\n"
DJANGO_ATOMIC_LINE = "\n    atomic = False\n"


class StagedMigrationWriter(MigrationWriter):
    def as_string(self):
        # Django 6.1 writes a bare "atomic = False" of its own; ours, with
        # the reason, replaces it so every Django version writes one line.
        text = super().as_string().replace(DJANGO_ATOMIC_LINE, "\n", 1)
        migration = self.migration
        # In memory a generated migration says its stage; the file says only
        # "contract" (an expand migration is what a migration is by default).
        stage = getattr(migration, "stage", None)
        lines = []
        if stage == "expand":
            lines.append("    # Expand: applied by `manage.py migrate` before the new code is deployed.")
            lines.append("    # Safe while the old code runs; until the contract migration, the old code may still:")
            lines.extend(f"    #   - {note}" for note in getattr(migration, "safemigrate_notes", []))
        elif stage == "contract":
            lines.append("    # Contract: held back by `manage.py migrate`; applied by `manage.py migrate_contract`")
            lines.append("    # once no old code runs (it removes what the old code still used).")
            lines.append('    stage = "contract"')
        if getattr(migration, "atomic", True) is False:
            lines.append("    atomic = False  # concurrent index builds and batched steps commit on their own")
        if not lines:
            return text
        return text.replace(CLASS_LINE, CLASS_LINE + "\n".join(lines) + "\n", 1)
