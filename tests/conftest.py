"""Shared fixtures. Tests use their own data dir so they never touch a developer's state."""

import os
import tempfile

os.environ.setdefault("STACKYARD_DATA_DIR", tempfile.mkdtemp(prefix="stackyard-test-"))

import pytest  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from tests import factories  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """PostgreSQL tests run in the DATABASE_URL pass. In CI the embedded pass leaves them out (they
    are not skipped: CI's other pass runs them, and fails if PostgreSQL is missing); locally they
    are skipped with a note saying how to run them."""
    from django.db import connection

    if connection.vendor == "postgresql":
        return
    needs_postgres = [item for item in items if "postgres" in item.keywords]
    if os.environ.get("CI", "").lower() == "true":
        config.hook.pytest_deselected(items=needs_postgres)
        items[:] = [item for item in items if "postgres" not in item.keywords]
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL=postgres://... (CI runs them)")
    for item in needs_postgres:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _broker_up():
    """Every test starts with kicks enabled (a test that fails a send pauses them for a while)."""
    from core import kicks

    kicks._broker_down_until, pause = 0.0, kicks.BROKER_DOWN_SECONDS
    yield
    kicks._broker_down_until, kicks.BROKER_DOWN_SECONDS = 0.0, pause


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
    """An API client with a new token of ``user`` (tokens are stored hashed: each client makes its own).

    The token counts as just used: its first request would otherwise also write ``last_used_at`` (once a
    minute), and query-count tests compare a client's first request with a later one.
    """
    from django.utils import timezone

    from projects.tokens import create_token

    token, key = create_token(user=user, name="test")
    type(token).objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def sim_backend(project):
    return factories.BackendFactory(project=project, name="sim", type="sim")


def reconcile_pass() -> int:
    """Run every reconciler once, as beat would; returns how many changes they made."""
    from fleets.instances import process_instances, process_terminating_instances
    from fleets.provisioning import reconcile_fleets
    from runs.placement import place_jobs
    from runs.rollout import roll_out
    from runs.schedules import trigger_scheduled_runs
    from runs.supervisor import retry_failed_replicas
    from runs.workloads import process_jobs
    from volumes.attachments import attach_volumes, detach_volumes, enforce_stop_durations
    from volumes.provisioning import process_volumes

    return sum(step() for step in (reconcile_fleets, process_instances, trigger_scheduled_runs, roll_out, place_jobs,
                                   attach_volumes, process_jobs, detach_volumes, enforce_stop_durations,
                                   retry_failed_replicas, process_terminating_instances, process_volumes))


@pytest.fixture
def reconcile(db):
    """Drive the reconcilers; leases are cleared first so a test never waits for one to expire."""
    from fleets.models import Fleet, Instance
    from runs.models import Job
    from volumes.models import Volume, VolumeAttachment

    def drive(rounds: int = 10) -> None:
        quiet = 0
        for _ in range(rounds):
            for model in (Fleet, Instance, Job, Volume, VolumeAttachment):
                model.objects.update(lease_until=None, lease_owner="")
            # Two quiet rounds: a poll may see no change yet move the provider on (a VM coming up).
            quiet = 0 if reconcile_pass() else quiet + 1
            if quiet == 2:
                return

    return drive


@pytest.fixture
def apply(api):
    """Apply a YAML configuration through the API and return the response body."""

    def apply_yaml(text: str, expect: int = 202) -> dict:
        response = api.post("/api/v1/projects/main/apply/", data=text, content_type="application/yaml")
        assert response.status_code == expect, response.content
        return response.json()

    return apply_yaml
