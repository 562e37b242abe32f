from django.apps import AppConfig


class SafeMigrateConfig(AppConfig):
    name = "safemigrate"
    verbose_name = "safemigrate"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Importing registers the checks; nothing else is patched.
        from . import checks  # noqa: F401
