from django.apps import AppConfig


class SafeMigrateConfig(AppConfig):
    name = "safemigrate"
    verbose_name = "safemigrate"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Importing registers the checks; announce() only touches OPTIONS when enabled.
        from . import checks  # noqa: F401
        from .planning.gate import announce

        announce()  # application_name with this code's migration fingerprint, when enabled
