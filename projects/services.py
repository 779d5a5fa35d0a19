"""Writes for projects, members and users."""

from django.contrib.auth import get_user_model
from django.db import transaction
from rest_framework.authtoken.models import Token

from core.errors import Conflict, InvalidInput
from core.events import record_event
from core.specs import SpecError, parse_name
from core.unique import insert_once
from projects.models import Membership, Project, Role

User = get_user_model()


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
    with insert_once(Project.objects.filter(name=name), f"project '{name}'"):
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
