"""The wiring, once, with a real Celery worker on the configured broker (filesystem or Redis).

An API change enqueues its reconciler on commit; the worker runs it against the real database.
"""

import time

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings

from config.celery import app
from tests import factories
from tests.conftest import client_for


@pytest.fixture
def worker(transactional_db):
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        yield


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_volume_apply_is_provisioned_by_a_real_worker(worker):
    project = factories.ProjectFactory(name="main")
    user = factories.UserFactory(username="alice")
    factories.MembershipFactory(project=project, user=user, role="admin")
    factories.BackendFactory(project=project, name="sim", type="sim")
    api = client_for(user)
    doc = "type: volume\nname: data-eu\nbackend: sim\nregion: eu-west-1\nsize: 10GB\n"
    assert api.post("/api/v1/projects/main/apply/", data=doc, content_type="application/yaml").status_code == 202
    # No beat here: only the on-commit kick can have brought the worker to it.
    status = lambda: api.get("/api/v1/projects/main/volumes/data-eu/").json()["status"]  # noqa: E731
    assert _wait_for(lambda: status() == "active"), f"volume still {status()} on broker {settings.CELERY_BROKER_URL}"


def test_beat_schedule_names_existing_tasks():
    app.loader.import_default_modules()
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks
        assert entry["options"]["expires"] <= entry["schedule"]
