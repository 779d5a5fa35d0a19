"""The event log: every state change of every resource writes one event in its own transaction."""

from core.models import Event


def record_event(
    *, project, resource_type: str, resource_name: str, kind: str, message: str = "", actor: str = ""
) -> Event:
    """Append one event. Callers write it inside the transaction of the change it describes.

    ``project`` is a project row or its primary key.
    """
    project_id = project if isinstance(project, int) else project.pk
    return Event.objects.create(
        project_id=project_id, resource_type=resource_type, resource_name=resource_name, kind=kind,
        message=message, actor=actor or "",
    )
