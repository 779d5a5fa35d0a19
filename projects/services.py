"""Writes for projects, members, users and the event log, plus the state-transition primitive."""

from django.contrib.auth import get_user_model
from django.db import models, transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from projects.errors import Conflict, InvalidInput
from projects.models import Event, Membership, Project, Role
from projects.specs import SpecError, parse_name

User = get_user_model()


def record_event(
    *, project: Project | int, resource_type: str, resource_name: str, kind: str, message: str = "", actor: str = ""
) -> Event:
    """Append one event. Callers write it inside the transaction of the change it describes."""
    project_id = project if isinstance(project, int) else project.pk
    return Event.objects.create(
        project_id=project_id,
        resource_type=resource_type,
        resource_name=resource_name,
        kind=kind,
        message=message,
        actor=actor or "",
    )


def compare_and_swap(
    model: type[models.Model], *, pk: int, allowed_from, to: str, **changes
) -> bool:
    """Move one row to status ``to`` only if it is still in ``allowed_from``.

    Returns False when someone else moved it first; the caller decides what that means
    (409 in the API, skip in a task). ``updated_at`` is set because ``update()`` skips auto_now.
    """
    if any(f.name == "updated_at" for f in model._meta.fields):
        changes.setdefault("updated_at", timezone.now())
    return model.objects.filter(pk=pk, status__in=list(allowed_from)).update(status=to, **changes) == 1


def actor_name(user) -> str:
    return getattr(user, "username", "") or ""


def valid_name(name: str, field: str = "name") -> str:
    try:
        return parse_name(name, field)
    except SpecError as err:
        raise InvalidInput(str(err), field=err.field) from err


@transaction.atomic
def create_project(*, name: str, owner=None) -> Project:
    """Create a project; its creator (if any) becomes its admin."""
    name = valid_name(name)
    if Project.objects.filter(name=name).exists():
        raise Conflict(f"project '{name}' already exists", code="already_exists")
    project = Project.objects.create(name=name)
    if owner is not None:
        Membership.objects.create(project=project, user=owner, role=Role.ADMIN)
    record_event(project=project, resource_type="project", resource_name=name, kind="created", actor=actor_name(owner))
    return project


@transaction.atomic
def add_member(*, project: Project, user, role: str = Role.USER, actor: str = "") -> Membership:
    """Make ``user`` a member of ``project`` with ``role`` (updating the role if already a member)."""
    if role not in Role.values:
        raise InvalidInput(f"role must be one of {', '.join(Role.values)}", field="role")
    membership, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    record_event(
        project=project, resource_type="project", resource_name=project.name, kind="member_added",
        message=f"{user.username} as {role}", actor=actor,
    )
    return membership


def create_user(*, username: str, staff: bool = False, token: str | None = None) -> tuple[object, str]:
    """Create a user (or reuse an existing one) and return it with its API token key."""
    user, created = User.objects.get_or_create(username=username, defaults={"is_staff": staff})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    if staff and not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    if token:
        Token.objects.filter(user=user).exclude(key=token).delete()
        key = Token.objects.get_or_create(user=user, defaults={"key": token})[0].key
    else:
        key = Token.objects.get_or_create(user=user)[0].key
    return user, key


class ApplyResult:
    """What applying one configuration did (or, on a dry run, would do)."""

    def __init__(self, *, type: str, name: str, action: str, spec: dict, changes: dict | None = None, resource=None):
        self.type = type
        self.name = name
        self.action = action  # "create", "update", "replace" or "unchanged"
        self.spec = spec
        self.changes = changes or {}
        self.resource = resource


def spec_changes(old: dict, new: dict) -> dict:
    """Top-level fields whose value differs between two normalized specs: {field: {old, new}}."""
    keys = sorted(set(old) | set(new))
    return {k: {"old": old.get(k), "new": new.get(k)} for k in keys if old.get(k) != new.get(k)}
