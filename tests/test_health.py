"""``/healthz`` tells when the workers stopped finishing reconciler passes; ``/metrics`` shows each pass's age.

Heartbeats are written by the workers (``core.heartbeats``, on task success); these tests write them
directly, except the ones that check the signal itself.
"""

from datetime import timedelta
from unittest import mock

import pytest
from django.conf import settings
from django.utils import timezone

from core.heartbeats import record_pass
from core.models import PassHeartbeat
from ops import health

LONG_AGO = timedelta(seconds=settings.STALL_SECONDS + 30)


@pytest.fixture
def started_long_ago(monkeypatch):
    """This web process started long before: the start-up grace is over."""
    monkeypatch.setattr(health, "PROCESS_STARTED_AT", timezone.now() - 10 * LONG_AGO)


def _beat(*names: str, age: timedelta = timedelta(0)) -> None:
    for name in names:
        record_pass(name, "w1@host")
    PassHeartbeat.objects.filter(task_name__in=names).update(finished_at=timezone.now() - age)


def test_healthz_is_200_while_every_fast_reconciler_finishes_passes(client, db, started_long_ago):
    _beat(*settings.FAST_RECONCILERS, age=timedelta(seconds=3))
    response = client.get("/healthz")
    assert response.status_code == 200, response.json()
    assert response.json()["workers"] == "ok"


def test_healthz_is_503_and_names_the_reconcilers_that_stopped_finishing_passes(client, db, started_long_ago):
    stalled = ["runs.place_jobs", "volumes.process_volumes"]
    _beat(*(n for n in settings.FAST_RECONCILERS if n not in stalled))
    _beat(*stalled, age=LONG_AGO)
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy" and body["database"] == "ok" and body["broker"] == "ok"
    assert body["stalled"] == stalled
    assert body["workers"].startswith("stalled: ")
    for name in stalled:
        assert f"{name} (last pass {LONG_AGO.total_seconds():.0f} s ago)" in body["workers"]


def test_no_pass_yet_is_healthy_during_the_start_up_grace_only(client, db, monkeypatch):
    _beat(*settings.FAST_RECONCILERS[1:])
    missing = settings.FAST_RECONCILERS[0]

    monkeypatch.setattr(health, "PROCESS_STARTED_AT", timezone.now() - timedelta(seconds=5))
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["workers"].startswith(f"no pass finished yet: {missing}")

    monkeypatch.setattr(health, "PROCESS_STARTED_AT", timezone.now() - LONG_AGO)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["stalled"] == [missing]
    assert f"{missing} (last pass never)" in response.json()["workers"]


def test_old_heartbeats_get_the_start_up_grace_after_a_restart(client, db, monkeypatch):
    # The stack was stopped for a while: its last passes are old, but the workers were just started.
    _beat(*settings.FAST_RECONCILERS, age=10 * LONG_AGO)
    monkeypatch.setattr(health, "PROCESS_STARTED_AT", timezone.now() - timedelta(seconds=5))
    assert client.get("/healthz").status_code == 200


def test_a_successful_pass_records_a_heartbeat_and_a_failed_one_does_not(db):
    from volumes.tasks import process_volumes

    process_volumes.apply()
    first = PassHeartbeat.objects.get(task_name="volumes.process_volumes").finished_at
    with mock.patch("volumes.tasks.process_volumes.run", side_effect=RuntimeError("driver down")):
        assert process_volumes.apply().failed()
    assert PassHeartbeat.objects.get(task_name="volumes.process_volumes").finished_at == first
    process_volumes.apply()
    assert PassHeartbeat.objects.get(task_name="volumes.process_volumes").finished_at > first


def test_metrics_export_the_age_of_each_last_pass(client, db):
    _beat("runs.place_jobs", age=timedelta(seconds=42))
    body = client.get("/metrics").content.decode()
    assert "# TYPE stackyard_reconciler_last_pass_age_seconds gauge" in body
    line = next(x for x in body.splitlines() if x.startswith('stackyard_reconciler_last_pass_age_seconds{task="runs'))
    assert line.startswith('stackyard_reconciler_last_pass_age_seconds{task="runs.place_jobs"} 42')
