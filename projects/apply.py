"""Apply a dstack configuration file: parse it, then hand it to the service of its resource type."""

from fleets.services import apply_fleet
from projects.configuration import load_document, parse_configuration
from projects.models import Project
from projects.services import ApplyResult
from projects.specs import SpecError
from runs.services import submit_run
from volumes.services import apply_volume


def typed_document(data, expected_type: str | None) -> dict:
    """A JSON body posted to a resource's own endpoint: a mapping whose ``type`` fits that endpoint."""
    if not isinstance(data, dict) or not data:
        raise SpecError("", "the body must be a non-empty configuration mapping")
    doc = dict(data)
    if expected_type is not None:
        doc.setdefault("type", expected_type)
        if doc["type"] != expected_type:
            raise SpecError("type", f"this endpoint takes '{expected_type}' configurations, not {doc['type']!r}")
    elif doc.get("type") not in ("task", "service"):
        raise SpecError("type", "runs are 'task' or 'service' configurations")
    return doc


def apply_configuration(*, project: Project, body: bytes, content_type: str | None, user, dry_run: bool) -> ApplyResult:
    """Create or update the resource a configuration file describes (or say what would change)."""
    doc = load_document(body, content_type)
    kind, spec = parse_configuration(doc)
    actor = getattr(user, "username", "") or ""
    if kind == "fleet":
        return apply_fleet(project=project, spec=spec, actor=actor, dry_run=dry_run)
    if kind == "volume":
        return apply_volume(project=project, spec=spec, actor=actor, dry_run=dry_run)
    return submit_run(project=project, spec=spec, user=user, dry_run=dry_run)



