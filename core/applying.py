"""What applying a configuration did, as every app reports it, and how the API shows a spec.

``ApplyResult`` is the one answer of ``submit_run``, ``apply_fleet`` and ``apply_volume``; the apply
endpoint serializes it. Secrets a configuration may hold are masked before the API shows one.
"""

from core.specs import SpecError


class ApplyResult:
    """What applying one configuration did (or, on a dry run, would do)."""

    def __init__(self, *, type: str, name: str, action: str, spec: dict, changes: dict | None = None, resource=None,
                 plan: dict | None = None):
        self.type = type
        self.name = name
        self.action = action  # "create", "update", "replace" or "unchanged"
        self.spec = spec
        self.changes = changes or {}
        self.resource = resource
        self.plan = plan  # what an update does beyond the spec (a service: replicas to start, stop, replace)


SECRET_MASK = "********"


def redact_secrets(value: object) -> object:
    """``value`` (a spec, or its changes) as the API shows it: every ``registry_auth.password`` masked.
    Secrets in a configuration are write-only, like a backend's credentials."""
    if isinstance(value, list):
        return [redact_secrets(item) for item in value]
    if not isinstance(value, dict):
        return value
    result = {key: redact_secrets(item) for key, item in value.items()}
    auth = result.get("registry_auth")
    if isinstance(auth, dict) and "password" in auth:
        result["registry_auth"] = {**auth, "password": SECRET_MASK}
    return result


def spec_changes(old: dict, new: dict) -> dict:
    """Top-level fields whose value differs between two normalized specs: {field: {old, new}}."""
    keys = sorted(set(old) | set(new))
    return {k: {"old": old.get(k), "new": new.get(k)} for k in keys if old.get(k) != new.get(k)}


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
