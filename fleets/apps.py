from django.apps import AppConfig


class FleetsConfig(AppConfig):
    name = "fleets"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from backends.dependents import register_dependents, register_terminator
        from fleets.services import active_instance_names, terminate_backend_instances

        register_dependents("instances", active_instance_names)
        register_terminator("instances", terminate_backend_instances)
