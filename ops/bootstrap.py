"""The first-start state of a Stackyard: superuser ``admin``, its API token, project ``main`` with two backends.

``bootstrap`` is idempotent: ``runstack`` calls it on every start, and it only adds what is missing.

* ``admin`` is a superuser. Its password is unusable (API token only) unless ``STACKYARD_ADMIN_PASSWORD``
  is set, in which case every bootstrap sets it; without the variable a password chosen with
  ``python manage.py changepassword admin`` is left alone.
* Its token is ``STACKYARD_ADMIN_TOKEN`` when given (replacing any older token), else the token it
  already has, else a new random one. Tokens live in the database, so later starts reuse them.
* Project ``main`` (``admin`` is an admin member) holds a ``sim`` backend named ``sim`` (the simulated
  cloud) and a ``local`` backend named ``local`` (this machine: a run placed there runs real commands).
  Each is created when missing, never changed or re-created otherwise.
"""

import os

from django.conf import settings
from django.db import transaction
from rest_framework.authtoken.models import Token

from backends.models import Backend
from backends.services import create_backend
from projects.models import Membership, Project, Role
from projects.services import add_member, create_project, create_user

ADMIN_USERNAME = "admin"
DEFAULT_PROJECT = "main"
DEFAULT_BACKEND = "sim"
# The backends of project ``main``: (name, type).
DEFAULT_BACKENDS = ((DEFAULT_BACKEND, "sim"), ("local", "local"))
# DRF's Token.key is a CharField(max_length=40).
MAX_TOKEN_LENGTH = Token._meta.get_field("key").max_length


class BootstrapError(Exception):
    """The environment asks for something bootstrap cannot do (an invalid or already used token)."""


def _check_token(token: str, username: str) -> None:
    if len(token) > MAX_TOKEN_LENGTH or not token.strip() or token != token.strip():
        raise BootstrapError(
            f"STACKYARD_ADMIN_TOKEN must be 1-{MAX_TOKEN_LENGTH} characters without surrounding spaces"
        )
    if Token.objects.filter(key=token).exclude(user__username=username).exists():
        raise BootstrapError("STACKYARD_ADMIN_TOKEN is already the token of another user")


def _ensure_superuser(user, password: str | None) -> None:
    changed = []
    if not (user.is_staff and user.is_superuser):
        user.is_staff = user.is_superuser = True
        changed += ["is_staff", "is_superuser"]
    if password and not user.check_password(password):
        user.set_password(password)
        changed.append("password")
    if changed:
        user.save(update_fields=changed)


def _ensure_project(user) -> Project:
    project = Project.objects.filter(name=DEFAULT_PROJECT).first()
    if project is None:
        return create_project(name=DEFAULT_PROJECT, owner=user)
    if not Membership.objects.filter(project=project, user=user, role=Role.ADMIN).exists():
        add_member(project=project, user=user, role=Role.ADMIN, actor="bootstrap")
    return project


def _ensure_backends(project: Project) -> None:
    for name, type_name in DEFAULT_BACKENDS:
        if type_name == "local" and not settings.LOCAL_BACKEND:
            continue  # STACKYARD_LOCAL_BACKEND=0: members of main may not run commands on this machine
        if not Backend.objects.filter(project=project, name=name).exists():
            create_backend(project=project, name=name, type=type_name, actor="bootstrap")


@transaction.atomic
def bootstrap(admin_token: str | None, *, admin_password: str | None = None) -> tuple[object, str]:
    """Make sure ``admin``, its token, project ``main`` and backends ``sim`` and ``local`` exist; return
    (admin, token key).

    ``admin_password`` defaults to ``STACKYARD_ADMIN_PASSWORD``.
    """
    if admin_password is None:
        admin_password = os.environ.get("STACKYARD_ADMIN_PASSWORD") or None
    if admin_token:
        _check_token(admin_token, ADMIN_USERNAME)
    user, key = create_user(username=ADMIN_USERNAME, staff=True, token=admin_token or None)
    _ensure_superuser(user, admin_password)
    project = _ensure_project(user)
    _ensure_backends(project)
    return user, key
