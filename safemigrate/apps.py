from django.apps import AppConfig


class SafeMigrateConfig(AppConfig):
    name = "safemigrate"
    verbose_name = "safemigrate"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # The entry point that wires the layers together (the only ground module
        # allowed to import from above; see docs/pages/architecture.md).
        # Importing registers the checks; announce() only touches OPTIONS when enabled.
        from . import checks  # noqa: F401
        from .planning.gate import announce
        from .stages import watch_test_database_creation

        watch_test_database_creation()  # the test database gets every stage
        announce()  # application_name with this code's migration fingerprint, when enabled
