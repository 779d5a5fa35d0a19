"""Writes for projects, members and users."""

from django.contrib.auth import get_user_model
from django.db import transaction

from core.errors import Conflict, InvalidInput
from core.events import record_event
from core.specs import SpecError, parse_name
from core.unique import insert_once
from projects.models import Membership, Project, Role
from projects.tokens import create_token

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


@transaction.atomic
def create_user(*, username: str, staff: bool = False, with_token: bool = True) -> tuple[object, str | None]:
    """Create a user (or reuse an existing one). Return it with the secret of its first API token when the
    user is new and ``with_token`` (None otherwise: secrets are stored hashed, so an existing token cannot be
    shown again)."""
    user, created = User.objects.get_or_create(username=username, defaults={"is_staff": staff})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    if staff and not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    if not (created and with_token):
        return user, None
    return user, create_token(user=user, name="default")[1]
