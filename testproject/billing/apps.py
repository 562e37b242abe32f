from django.apps import AppConfig


class BillingConfig(AppConfig):
    """A model-less app whose migrations the command tests supply on the fly."""

    name = "testproject.billing"
    label = "billing"
