from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import CreateModel
from django.db.migrations.state import ProjectState

from safemigrate.lint import classify


class Command(BaseCommand):
    help = (
        "Report each risky operation in existing migrations (third-party ones included): the lock "
        "it takes or what it breaks for the running code, and the safe alternative."
    )

    def add_arguments(self, parser):
        parser.add_argument("app_label", nargs="*", help="Only these apps (default: all).")
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS,
                            help="Database whose applied-migration records decide what --unapplied shows.")
        parser.add_argument("--unapplied", action="store_true", help="Only migrations not applied yet.")
        parser.add_argument("--fail-on-risky", action="store_true",
                            help="Exit with status 1 when any risky operation is found (for CI).")

    def handle(self, *args, **options):
        app_labels = options["app_label"]
        # Without --unapplied no database is needed, so the linter runs in any CI job.
        connection = connections[options["database"]] if options["unapplied"] else None
        loader = MigrationLoader(connection, ignore_no_migrations=True)
        unknown = set(app_labels) - {app for app, _ in loader.disk_migrations}
        if unknown:
            raise CommandError(f"No migrations found for: {', '.join(sorted(unknown))}")
        graph = loader.graph
        ordered = []
        seen = set()
        for leaf in graph.leaf_nodes():
            for key in graph.forwards_plan(leaf):
                if key not in seen:
                    seen.add(key)
                    ordered.append(key)
        state = ProjectState(real_apps=loader.unmigrated_apps)
        count = 0
        for key in ordered:
            migration = loader.graph.nodes[key]
            selected = not app_labels or key[0] in app_labels
            if options["unapplied"] and key in loader.applied_migrations:
                selected = False
            created = set()
            for operation in migration.operations:
                if isinstance(operation, CreateModel):
                    created.add(operation.name_lower)
                # Anything done to a table created in the same migration touches no live rows.
                fresh = getattr(operation, "model_name_lower", getattr(operation, "name_lower", None)) in created
                finding = classify(operation, state, key[0]) if selected and not fresh else None
                if finding:
                    count += 1
                    self.stdout.write(f"{key[0]}.{key[1]}: {finding}")
                operation.state_forwards(key[0], state)
        if count:
            self.stdout.write(self.style.WARNING(f"{count} risky operation(s) found."))
        elif options["verbosity"] >= 1:
            self.stdout.write(self.style.SUCCESS("No risky operations found."))
        if count and options["fail_on_risky"]:
            raise SystemExit(1)
