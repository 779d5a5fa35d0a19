"""The first-start state of a Stackyard: superuser ``admin``, its API token, project ``main`` with two backends.

``bootstrap`` is idempotent: ``runstack`` calls it on every start, and it only adds what is missing.

* ``admin`` is a superuser. Its password is unusable (API token only) unless ``STACKYARD_ADMIN_PASSWORD``
  is set, in which case every bootstrap sets it; without the variable a password chosen with
  ``python manage.py changepassword admin`` is left alone.
* Its API token: with ``STACKYARD_ADMIN_TOKEN`` (32 characters or more), the token with that secret is
  made if missing (found by its hash) and replaces the token an earlier value of the variable gave;
  without it, a random token is made only when ``admin`` has no valid token, and returned so that it
  can be shown once (tokens are stored hashed: an existing one can never be shown again).
* Project ``main`` (``admin`` is an admin member) holds a ``sim`` backend named ``sim`` (the simulated
  cloud) and a ``local`` backend named ``local`` (this machine: a run placed there runs real commands).
  Each is created when missing, never changed or re-created otherwise.
"""

import os

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backends.models import Backend
from backends.services import create_backend
from core.errors import InvalidInput
from projects.models import ApiToken, Membership, Project, Role
from projects.services import add_member, create_project, create_user
from projects.tokens import check_key, create_token, digest_of, valid_tokens

ADMIN_USERNAME = "admin"
DEFAULT_PROJECT = "main"
DEFAULT_BACKEND = "sim"
# The backends of project ``main``: (name, type).
DEFAULT_BACKENDS = ((DEFAULT_BACKEND, "sim"), ("local", "local"))
# The names of the admin's tokens that bootstrap makes: from STACKYARD_ADMIN_TOKEN, or random.
ENV_TOKEN_NAME = "STACKYARD_ADMIN_TOKEN"
RANDOM_TOKEN_NAME = "bootstrap"


class BootstrapError(Exception):
    """The environment asks for something bootstrap cannot do (an invalid, revoked or already used token)."""


def check_admin_token(key: str | None) -> None:
    """Refuse a ``STACKYARD_ADMIN_TOKEN`` that is too short (under 32 characters) or has spaces."""
    if key:
        try:
            check_key(key, "STACKYARD_ADMIN_TOKEN")
        except InvalidInput as err:
            raise BootstrapError(err.detail) from None


def _ensure_env_token(user, key: str) -> None:
    """The token whose secret is ``key`` exists and belongs to ``user``; the one an earlier value of the
    variable gave is revoked, so changing the variable rotates the token."""
    token = ApiToken.objects.filter(digest=digest_of(key)).first()
    if token is not None and token.user_id != user.pk:
        raise BootstrapError("STACKYARD_ADMIN_TOKEN is already the token of another user")
    status = token.status_at(timezone.now()) if token is not None else "active"
    if status != "active":
        raise BootstrapError(f"STACKYARD_ADMIN_TOKEN names a token that is {status}; set a new value")
    if token is None:
        token, _ = create_token(user=user, name=ENV_TOKEN_NAME, key=key)
    elif token.name != ENV_TOKEN_NAME:  # e.g. "migrated" from DRF's table: the variable owns it now
        ApiToken.objects.filter(pk=token.pk).update(name=ENV_TOKEN_NAME)
    valid_tokens(user).filter(name=ENV_TOKEN_NAME).exclude(pk=token.pk).update(revoked_at=timezone.now())


def _ensure_some_token(user) -> str | None:
    """A new random token when ``user`` has no valid one (its secret, to show once); else None."""
    if valid_tokens(user).exists():
        return None
    return create_token(user=user, name=RANDOM_TOKEN_NAME)[1]


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
def bootstrap(admin_token: str | None, *, admin_password: str | None = None) -> tuple[object, str | None]:
    """Make sure ``admin``, its token, project ``main`` and backends ``sim`` and ``local`` exist; return
    (admin, the secret of a token made now and to be shown once, or None).

    ``admin_token`` is ``STACKYARD_ADMIN_TOKEN`` (at least 32 characters, ``projects.tokens.MIN_TOKEN_LENGTH``).
    ``admin_password`` defaults to ``STACKYARD_ADMIN_PASSWORD``.
    """
    if admin_password is None:
        admin_password = os.environ.get("STACKYARD_ADMIN_PASSWORD") or None
    check_admin_token(admin_token)
    user, _ = create_user(username=ADMIN_USERNAME, staff=True, with_token=False)
    if admin_token:
        _ensure_env_token(user, admin_token)
        new_key = None
    else:
        new_key = _ensure_some_token(user)
    _ensure_superuser(user, admin_password)
    project = _ensure_project(user)
    _ensure_backends(project)
    return user, new_key
