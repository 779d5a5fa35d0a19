"""Apply a dstack configuration file: parse it, then hand it to the service of its resource type."""

from configurations.loading import load_document, parse_configuration, unwrap_request
from core.applying import ApplyResult
from fleets.services import apply_fleet
from projects.models import Project
from runs.services import submit_run
from volumes.services import apply_volume


def apply_configuration(*, project: Project, body: bytes, content_type: str | None, user, dry_run: bool) -> ApplyResult:
    """Create or update the resource a configuration file describes (or say what would change)."""
    doc, env = unwrap_request(load_document(body, content_type))
    kind, spec = parse_configuration(doc, env)
    actor = getattr(user, "username", "") or ""
    if kind == "fleet":
        return apply_fleet(project=project, spec=spec, actor=actor, dry_run=dry_run)
    if kind == "volume":
        return apply_volume(project=project, spec=spec, actor=actor, dry_run=dry_run)
    return submit_run(project=project, spec=spec, user=user, dry_run=dry_run)



