from django.apps import AppConfig


class LedgerConfig(AppConfig):
    """A model-less app whose migrations the command tests supply on the fly."""

    name = "testproject.ledger"
    label = "ledger"
