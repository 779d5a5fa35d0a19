from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The framework under every app: errors, transitions, events, leases, the reconcile pipeline,
    kicks and the configuration-parsing base. It imports no app."""

    name = "core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from core import heartbeats, kicks  # noqa: F401 - connect the task_success and task_prerun handlers
