from django.apps import AppConfig


class ConfigurationsConfig(AppConfig):
    name = "configurations"
    default_auto_field = "django.db.models.BigAutoField"
