"""The server configuration file (``STACKYARD_CONFIG``): projects and their backends, declared like
dstack's ``~/.dstack/server/config.yml``; applied at start by ``runstack`` and by ``manage.py applyconfig``.

``load_server_config`` reads and validates the whole file first (structure, environment variables,
each backend's config and credentials by its driver): an error names its path
(``projects[0].backends[1].type``) and nothing is applied. ``apply_server_config`` then, per listed
project (created if missing, owned by the bootstrap ``admin``), creates each missing backend and
updates one whose config or credentials differ, through the backend services, which run the
driver's access check: a refused change leaves the stored backend as it was.

A backend is *managed* by the file when the file created it: its latest ``created`` event has the
actor ``server config`` (no Django username can contain a space, so an API or admin user never
looks like it). A managed backend of a listed project that the file no longer lists is deleted
when empty; while instances or volumes remain it is drained and the conflict is reported (event
``config_conflict``, the backend's ``status_message``, a log warning) with the lists of the 409 of
a DELETE, and a later apply deletes it once empty. Backends created otherwise (API, admin,
bootstrap) are only ever created or updated by the file, never drained or deleted by it.

Applying the same file twice changes nothing and writes no event.
"""

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from backends.dependents import backend_dependencies
from backends.drivers.registry import driver_class
from backends.models import Backend, BackendStatus
from backends.services import create_backend, delete_backend, drain_backend, resume_backend, update_backend
from core.errors import Conflict, InvalidInput, ServiceError
from core.events import record_event
from core.models import Event
from core.specs import SpecError, check_keys, kind_of, parse_name, require_mapping, subfield
from ops.bootstrap import ADMIN_USERNAME
from projects.models import Project
from projects.services import create_project

logger = logging.getLogger(__name__)

CONFIG_ACTOR = "server config"
CONFLICT_PREFIX = "removed from the server config file"
# dstack's server config fields Stackyard does not act on: refused by name, never ignored silently.
UNSUPPORTED_TOP = ("encryption", "default_permissions", "plugins")
BACKEND_OWN_KEYS = ("name", "type", "config", "creds", "credentials")

# ${VAR}, ${env.VAR} and dstack's ${{ env.VAR }}; $${ is a literal ${. Any other ${ is an error.
_ENV_REF = re.compile(r"\$\$\{|\$\{\{\s*env\.([A-Za-z_]\w*)\s*\}\}|\$\{(?:env\.)?([A-Za-z_]\w*)\}|\$\{")

CREATED, UPDATED, RESUMED, UNCHANGED = "created", "updated", "resumed", "unchanged"
DRAINED, DRAINING, DELETED, ERROR = "drained", "draining", "deleted", "error"
_WOULD = {CREATED: "would create", UPDATED: "would update", RESUMED: "would resume", DRAINED: "would drain",
          DELETED: "would delete"}


class ServerConfigError(Exception):
    """The file cannot be read or is invalid (nothing applied), or some of it could not be applied."""


@dataclass(frozen=True)
class BackendDecl:
    """One backend as the file declares it, normalized by its driver. ``path`` locates it in the file;
    ``config_path`` and ``creds_path`` locate its config and credentials in whichever shape it used."""

    name: str
    type: str
    config: dict
    credentials: dict
    path: str
    config_path: str
    creds_path: str


@dataclass(frozen=True)
class ProjectDecl:
    name: str
    backends: tuple[BackendDecl, ...]
    path: str


@dataclass(frozen=True)
class Outcome:
    """What an apply did (or, in a dry run, would do) to one project or backend (``backend`` "")."""

    project: str
    backend: str
    action: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.action == ERROR

    def describe(self, *, dry_run: bool = False) -> str:
        what = f"project {self.project}" if not self.backend else f"backend {self.project}/{self.backend}"
        action = _WOULD.get(self.action, self.action) if dry_run else self.action
        return f"{what}: {action}" + (f" ({self.detail})" if self.detail else "")


# --- reading the file -----------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader refusing duplicate keys, which PyYAML would otherwise resolve silently to the last one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise SpecError("", f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_server_config(path: str | Path, environ: dict | None = None) -> tuple[ProjectDecl, ...]:
    """Read, substitute and validate the file; ``ServerConfigError`` naming the file and the path."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        doc = yaml.load(text, Loader=_StrictLoader)
        return parse_server_config(doc, os.environ if environ is None else environ)
    except OSError as err:
        raise ServerConfigError(f"cannot read the server config file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ServerConfigError(f"{path}: malformed YAML: {err}") from None
    except SpecError as err:
        raise ServerConfigError(f"{path}: {err}") from None


def parse_server_config(doc, environ) -> tuple[ProjectDecl, ...]:
    """The projects a loaded document declares; ``SpecError`` on the first problem, naming its path."""
    if doc is None:
        return ()
    doc = _substitute(require_mapping(doc, ""), "", environ)
    check_keys(doc, "", ("projects",), UNSUPPORTED_TOP)
    projects = doc.get("projects") or []
    if not isinstance(projects, list):
        raise SpecError("projects", f"expected a list, got {kind_of(projects)}")
    parsed = [_parse_project(item, f"projects[{i}]") for i, item in enumerate(projects)]
    _refuse_repeats(parsed, "project")
    return tuple(parsed)


def _substitute(value, path: str, environ):
    """``value`` with every environment reference in its strings replaced (keys are left alone)."""
    if isinstance(value, dict):
        return {key: _substitute(item, subfield(path, key), environ) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, f"{path}[{i}]", environ) for i, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def resolve(match: re.Match) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group(1) or match.group(2)
        if name is None:
            raise SpecError(path, "malformed environment reference: use ${VAR}, ${env.VAR} or ${{ env.VAR }} "
                                  "(write $${ for a literal ${)")
        if name not in environ:
            raise SpecError(path, f"environment variable {name} is not set")
        return environ[name]

    return _ENV_REF.sub(resolve, value)


def _parse_project(item, path: str) -> ProjectDecl:
    item = require_mapping(item, path)
    check_keys(item, path, ("name", "backends"))
    name = parse_name(item.get("name"), subfield(path, "name"))
    backends = item.get("backends") or []
    if not isinstance(backends, list):
        raise SpecError(subfield(path, "backends"), f"expected a list, got {kind_of(backends)}")
    parsed = [_parse_backend(b, f"{path}.backends[{i}]") for i, b in enumerate(backends)]
    _refuse_repeats(parsed, "backend")
    return ProjectDecl(name=name, backends=tuple(parsed), path=path)


def _parse_backend(item, path: str) -> BackendDecl:
    """Accept dstack's shape (provider fields beside ``type``, ``creds``) and ours (``config``,
    ``credentials``); a backend without ``name`` is named after its type, as in dstack."""
    item = require_mapping(item, path)
    backend_type = item.get("type")
    if not isinstance(backend_type, str):
        raise SpecError(subfield(path, "type"), "this field is required: a backend type such as sim or aws")
    name = parse_name(item.get("name", backend_type), subfield(path, "name"))
    provider_fields = {k: v for k, v in item.items() if k not in BACKEND_OWN_KEYS}
    if "config" in item and provider_fields:
        raise SpecError(subfield(path, sorted(provider_fields)[0]),
                        "give the provider's fields either under 'config' or beside 'type', not both")
    if "creds" in item and "credentials" in item:
        raise SpecError(subfield(path, "credentials"), "give either 'creds' or 'credentials', not both")
    config_path = subfield(path, "config") if "config" in item else path
    creds_path = subfield(path, "credentials" if "credentials" in item else "creds")
    config = item["config"] if "config" in item else provider_fields
    credentials = item.get("credentials", item.get("creds"))
    decl = BackendDecl(name=name, type=backend_type, config={}, credentials={}, path=path,
                       config_path=config_path, creds_path=creds_path)
    try:
        driver = driver_class(backend_type)
        config = driver.validate_config(require_mapping(config if config is not None else {}, config_path))
        credentials = driver.validate_credentials(require_mapping(credentials or {}, creds_path))
    except InvalidInput as err:
        raise SpecError(field_path(decl, err), err.detail) from None
    return BackendDecl(name=name, type=backend_type, config=config, credentials=credentials, path=path,
                       config_path=config_path, creds_path=creds_path)


def field_path(decl: BackendDecl, err: ServiceError) -> str:
    """Where in the file the field a backend service or driver complained about is."""
    field = str(err.extra.get("field") or "")
    if field == "type":
        return subfield(decl.path, "type")
    head, _, rest = field.partition(".")
    if head in ("credentials", "creds"):
        return _under(decl.creds_path, rest)
    if head == "config":
        return _under(decl.config_path, rest)
    if err.code == "invalid_config":
        return _under(decl.config_path, field)
    return _under(decl.creds_path, field) if field else decl.path


def _under(base: str, field: str) -> str:
    return f"{base}{field}" if field.startswith("[") else subfield(base, field) if field else base


def _refuse_repeats(items, what: str) -> None:
    seen = set()
    for item in items:
        if item.name in seen:
            raise SpecError(subfield(item.path, "name"), f"{what} '{item.name}' is listed twice")
        seen.add(item.name)


# --- applying it ----------------------------------------------------------------------------------


def apply_server_config(projects: tuple[ProjectDecl, ...], *, dry_run: bool = False) -> list[Outcome]:
    """Bring the listed projects' backends to what the file declares; one outcome per project created
    and per backend. A backend that cannot be brought there is an ``error`` outcome; the others are
    applied all the same. A dry run writes nothing and runs no access check."""
    outcomes: list[Outcome] = []
    for decl in projects:
        project = Project.objects.filter(name=decl.name).first()
        if project is None:
            outcomes.append(Outcome(decl.name, "", CREATED))
            if dry_run:
                outcomes += [Outcome(decl.name, b.name, CREATED) for b in decl.backends]
                continue
            project = _create_project(decl.name)
        outcomes += _apply_project(project, decl, dry_run=dry_run)
    return outcomes


def _create_project(name: str) -> Project:
    owner = get_user_model().objects.filter(username=ADMIN_USERNAME).first()
    try:
        return create_project(name=name, owner=owner)
    except Conflict:  # created meanwhile (another apply)
        return Project.objects.get(name=name)


def _apply_project(project: Project, decl: ProjectDecl, *, dry_run: bool) -> list[Outcome]:
    existing = {b.name: b for b in Backend.objects.filter(project=project)}
    listed = {b.name for b in decl.backends}
    outcomes = [_apply_backend(project, b, existing.get(b.name), dry_run=dry_run) for b in decl.backends]
    for backend in config_created_backends(project):
        if backend.name not in listed:
            outcomes.append(_remove_backend(backend, dry_run=dry_run))
    return outcomes


def config_created_backends(project: Project) -> list[Backend]:
    """The project's backends whose latest ``created`` event is the file's (the ones it manages)."""
    latest: dict[str, str] = {}
    events = Event.objects.filter(project=project, resource_type="backend", kind="created").order_by("created_at", "id")
    for name, actor in events.values_list("resource_name", "actor"):
        latest[name] = actor
    names = [name for name, actor in latest.items() if actor == CONFIG_ACTOR]
    return list(Backend.objects.filter(project=project, name__in=names).order_by("name"))


def _apply_backend(project: Project, decl: BackendDecl, backend: Backend | None, *, dry_run: bool) -> Outcome:
    def outcome(action: str, detail: str = "") -> Outcome:
        return Outcome(project.name, decl.name, action, detail)

    if backend is not None and backend.type != decl.type:
        return outcome(ERROR, f"{subfield(decl.path, 'type')}: backend '{decl.name}' exists with type "
                              f"{backend.type}; a backend's type cannot change (delete it or use another name)")
    changes = _changes(backend, decl) if backend is not None else []
    resume = backend is not None and _drained_by_config(backend)
    if backend is not None and not changes and not resume:
        return outcome(UNCHANGED)
    if dry_run:
        return outcome(CREATED) if backend is None else _changed_outcome(outcome, changes, resume)
    try:
        if backend is None:
            create_backend(project=project, name=decl.name, type=decl.type, config=decl.config,
                           credentials=decl.credentials, actor=CONFIG_ACTOR)
            return outcome(CREATED)
        if changes:
            update_backend(backend=backend, config=decl.config if "config" in changes else None,
                           credentials=decl.credentials if "credentials" in changes else None, actor=CONFIG_ACTOR)
        if resume:
            resume_backend(backend=backend, actor=CONFIG_ACTOR)
    except ServiceError as err:
        logger.warning("server config: backend %s/%s not applied: %s", project.name, decl.name, err.detail)
        kept = "; the stored backend is unchanged" if backend is not None else ""
        return outcome(ERROR, f"{field_path(decl, err)}: {err.detail}{kept}")
    return _changed_outcome(outcome, changes, resume)


def _changes(backend: Backend, decl: BackendDecl) -> list[str]:
    changes = []
    if backend.config != decl.config:
        changes.append("config")
    if backend.credentials != decl.credentials:
        changes.append("credentials")
    return changes


def _changed_outcome(outcome, changes: list[str], resume: bool) -> Outcome:
    if changes:
        return outcome(UPDATED, "changed " + ", ".join(changes) + ("; resumed" if resume else ""))
    return outcome(RESUMED, "listed in the server config file again")


def _drained_by_config(backend: Backend) -> bool:
    """A drain the file asked for ends when the file lists the backend again; an operator's does not."""
    return backend.status == BackendStatus.DRAINING and backend.status_message.startswith(CONFLICT_PREFIX)


def _remove_backend(backend: Backend, *, dry_run: bool) -> Outcome:
    """Delete a managed backend the file no longer lists, or, while it is in use, drain it and report."""
    if dry_run:
        dependencies = backend_dependencies(backend)
        if any(dependencies.values()):
            same = backend.status_message == conflict_message(dependencies)
            return Outcome(backend.project.name, backend.name, DRAINING if same else DRAINED,
                           conflict_message(dependencies))
        return Outcome(backend.project.name, backend.name, DELETED, "not in the server config file")
    try:
        delete_backend(backend=backend, actor=CONFIG_ACTOR)
    except Conflict as err:
        if err.code != "backend_in_use":
            return Outcome(backend.project.name, backend.name, ERROR, err.detail)
        return report_conflict(backend, {k: v for k, v in err.extra.items() if isinstance(v, list)})
    return Outcome(backend.project.name, backend.name, DELETED, "not in the server config file")


def conflict_message(dependencies: dict[str, list[str]]) -> str:
    lists = "; ".join(f"{kind}: {', '.join(names) if names else '-'}" for kind, names in sorted(dependencies.items()))
    return f"{CONFLICT_PREFIX}, but still in use: draining; deleted once empty ({lists})"


def report_conflict(backend: Backend, dependencies: dict[str, list[str]]) -> Outcome:
    """Drain the backend and report what keeps it: an event and its ``status_message``, written only
    when this apply drained it or the lists changed, and a log warning every time."""
    message = conflict_message(dependencies)
    with transaction.atomic():
        drain_backend(backend=backend, actor=CONFIG_ACTOR)
        changed = (Backend.objects.filter(pk=backend.pk, status=BackendStatus.DRAINING)
                   .exclude(status_message=message).update(status_message=message))
        if changed:
            record_event(project=backend.project_id, resource_type="backend", resource_name=backend.name,
                         kind="config_conflict", message=message, actor=CONFIG_ACTOR)
    logger.warning("server config: backend %s/%s %s", backend.project.name, backend.name, message)
    return Outcome(backend.project.name, backend.name, DRAINED if changed else DRAINING, message)


# --- entry points ---------------------------------------------------------------------------------


def apply_file(path: str | Path, *, dry_run: bool = False) -> list[Outcome]:
    """Load and apply one file (``ServerConfigError`` if it is invalid: then nothing is applied)."""
    return apply_server_config(load_server_config(path), dry_run=dry_run)


def apply_at_start() -> list[Outcome]:
    """What ``runstack`` runs after bootstrap: apply ``settings.SERVER_CONFIG`` if set.

    Raises ``ServerConfigError`` when the file is invalid or any backend could not be applied, so that
    a server never starts with a configuration other than the one its file declares.
    """
    path = settings.SERVER_CONFIG
    if not path:
        return []
    outcomes = apply_file(path)
    failures = [o for o in outcomes if o.failed]
    if failures:
        lines = "\n".join("  " + o.describe() for o in failures)
        raise ServerConfigError(f"the server config file {path} could not be applied:\n{lines}")
    return outcomes
