"""Shared fixtures. Tests use their own data dir so they never touch a developer's state."""

import os
import tempfile

os.environ.setdefault("STACKYARD_DATA_DIR", tempfile.mkdtemp(prefix="stackyard-test-"))

import pytest  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from tests import factories  # noqa: E402


def pytest_collection_modifyitems(config, items):
    from django.db import connection

    if connection.vendor == "postgresql":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL: runs in the DATABASE_URL pass of make test / CI")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def project(db):
    return factories.ProjectFactory(name="main")


@pytest.fixture
def user(db, project):
    user = factories.UserFactory(username="alice")
    factories.MembershipFactory(project=project, user=user, role="admin")
    return user


@pytest.fixture
def api(user):
    """An API client authenticated with the token of ``user``, an admin of ``project``."""
    return client_for(user)


def client_for(user) -> APIClient:
    from rest_framework.authtoken.models import Token

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


@pytest.fixture
def sim_backend(project):
    return factories.BackendFactory(project=project, name="sim", type="sim")
