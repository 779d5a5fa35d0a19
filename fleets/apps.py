from django.apps import AppConfig


class FleetsConfig(AppConfig):
    name = "fleets"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models import Q

        from backends.dependents import register_dependents, register_owner, register_terminator
        from fleets.models import INSTANCE_ACTIVE_STATES
        from fleets.selectors import owned_instance_ids
        from fleets.services import active_instance_names, terminate_backend_instances

        register_dependents("instances", active_instance_names,
                            lambda: Q(instances__status__in=INSTANCE_ACTIVE_STATES))
        register_terminator("instances", terminate_backend_instances)
        register_owner("instance", owned_instance_ids)
