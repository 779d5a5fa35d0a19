"""``/metrics``: state gauges from the database, latency histograms from placement and stop, Celery task
figures from the task signals, and a scrape whose query count does not grow with the number of runs."""

from datetime import timedelta
from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from prometheus_client.parser import text_string_to_metric_families

from runs.models import Job, Run
from tests import factories

pytestmark = pytest.mark.django_db

P = "/api/v1/projects/main"
GPU8 = "type: fleet\nname: gpu8\nnodes: 1\nbackends: [sim]\nresources:\n  gpu: H100:8\nblocks: 8\n"
TRAIN = "type: task\nname: train\ncommands: [train]\nnodes: 1\nresources: {gpu: 2}\nfleets: [gpu8]\n"


def scrape(client) -> dict[tuple, float]:
    """Every sample of a scrape: ``{(name, (label pairs sorted)): value}``."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.content.decode()) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def fleet(sim_backend, apply, reconcile):
    apply(GPU8)
    reconcile()


def test_placement_and_stop_move_the_histograms_and_the_gauges(fleet, client, api, apply, reconcile,
                                                               django_capture_on_commit_callbacks):
    before = scrape(client)
    apply(TRAIN)
    # The job waited 45 s for its instance: it lands in the 60 s bucket, not in the 30 s one.
    Job.objects.filter(run__name="train").update(submitted_at=Run.objects.get(name="train").submitted_at
                                                 - timedelta(seconds=45))
    with django_capture_on_commit_callbacks(execute=True):  # observed once the assignment commits
        reconcile()
    running = scrape(client)
    placed = "stackyard_job_placement_seconds"
    assert value(running, f"{placed}_count") - value(before, f"{placed}_count") == 1
    assert 45 <= value(running, f"{placed}_sum") - value(before, f"{placed}_sum") < 50
    assert value(running, f"{placed}_bucket", le="30.0") == value(before, f"{placed}_bucket", le="30.0")
    assert value(running, f"{placed}_bucket", le="60.0") - value(before, f"{placed}_bucket", le="60.0") == 1
    assert value(running, "stackyard_runs", status="running") == 1
    assert value(running, "stackyard_jobs", status="running") == 1
    assert value(running, "stackyard_fleet_busy_blocks", project="main", fleet="gpu8") == 2
    assert value(running, "stackyard_fleet_blocks", project="main", fleet="gpu8") == 8
    assert value(running, "stackyard_fleet_block_utilization", project="main", fleet="gpu8") == 0.25

    assert api.post(f"{P}/runs/train/stop/", {}, format="json").status_code == 202
    Run.objects.filter(name="train").update(terminating_since=Run.objects.get(name="train").terminating_since
                                            - timedelta(seconds=100))
    with django_capture_on_commit_callbacks(execute=True):
        reconcile()
    stopped = scrape(client)
    stop = "stackyard_run_stop_seconds"
    assert Run.objects.get(name="train").status == "terminated"
    assert value(stopped, f"{stop}_count", status="terminated") - value(running, f"{stop}_count",
                                                                          status="terminated") == 1
    assert 100 <= value(stopped, f"{stop}_sum", status="terminated") - value(running, f"{stop}_sum",
                                                                              status="terminated") < 110
    assert value(stopped, "stackyard_runs", status="running") == 0
    assert ("stackyard_runs", (("status", "terminated"),)) not in stopped  # finished runs are history, not counted
    assert value(stopped, "stackyard_fleet_busy_blocks", project="main", fleet="gpu8") == 0
    assert value(stopped, "stackyard_fleet_block_utilization", project="main", fleet="gpu8") == 0
    assert value(stopped, f"{placed}_count") == value(running, f"{placed}_count")  # nothing placed again


def test_a_rolled_back_assignment_is_not_a_placement(fleet, client, apply, django_capture_on_commit_callbacks):
    from django.db import transaction

    from fleets.models import Instance
    from runs.jobs import assign_jobs

    apply(TRAIN)
    job, instance = Job.objects.get(run__name="train"), Instance.objects.get(name="gpu8-0")
    before = value(scrape(client), "stackyard_job_placement_seconds_count")
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        assert assign_jobs([(job, instance, 2)]) == {job.pk}
        transaction.set_rollback(True)  # a gang that did not fit whole gives everything back
    assert value(scrape(client), "stackyard_job_placement_seconds_count") == before


def test_celery_tasks_report_their_duration_and_failures(client):
    from volumes.tasks import process_volumes

    name = "volumes.process_volumes"
    before = scrape(client)
    assert process_volumes.apply().successful()
    with mock.patch("volumes.tasks.process_volumes.run", side_effect=RuntimeError("driver down")):
        assert process_volumes.apply().failed()
    after = scrape(client)
    count = "stackyard_task_duration_seconds_count"
    assert value(after, count, task=name) - value(before, count, task=name) == 2  # failed ones take time too
    assert value(after, "stackyard_task_failures_total", task=name) - value(
        before, "stackyard_task_failures_total", task=name) == 1


def test_orphans_services_and_statuses_come_from_the_database(client, project, sim_backend):
    from django.utils import timezone

    from backends.models import Orphan

    now = timezone.now()
    for i, status in enumerate(("found", "found", "terminated", "resolved")):
        Orphan.objects.create(backend=sim_backend, kind="instance", provider_id=f"i-{i}", status=status,
                              first_seen_at=now, last_seen_at=now)
    for name, health in (("a", "healthy"), ("b", "healthy"), ("c", "degraded"), ("d", "")):
        factories.RunFactory(project=project, name=name, type="service", status="running", health=health)
    factories.RunFactory(project=project, name="old", type="service", status="terminated", health="healthy")
    samples = scrape(client)
    orphans = {"project": "main", "backend": "sim", "kind": "instance"}
    assert value(samples, "stackyard_orphans", status="found", **orphans) == 2
    assert value(samples, "stackyard_orphans", status="terminated", **orphans) == 1
    assert ("stackyard_orphans", tuple(sorted({**orphans, "status": "resolved"}.items()))) not in samples
    assert [value(samples, "stackyard_services_by_health", health=h) for h in ("healthy", "degraded", "down")] == [
        2, 1, 1]  # not derived yet counts as down; finished services are left out
    assert value(samples, "stackyard_runs", status="running") == 4
    assert ("stackyard_runs", (("status", "pending"),)) in samples  # every unfinished status is there, 0 when none
    assert ("stackyard_runs", (("status", "terminated"),)) not in samples


def _runs_with_jobs(project, instance, first: int, last: int) -> None:
    for i in range(first, last):
        run = factories.RunFactory(project=project, name=f"svc-{i}", type="service", status="running",
                                   health="healthy")
        factories.JobFactory(run=run, instance=instance, blocks=1, status="running")


def test_a_scrape_takes_the_same_queries_for_5_and_50_runs(client, project, sim_backend):
    fleet = factories.FleetFactory(project=project, name="gpu8")
    instance = factories.InstanceFactory(fleet=fleet, backend=sim_backend, total_blocks=64, busy_blocks=50,
                                         status="busy")

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            scrape(client)
        return len(captured)

    _runs_with_jobs(project, instance, 0, 5)
    few = queries()
    _runs_with_jobs(project, instance, 5, 50)
    many = queries()
    assert few == many
    assert value(scrape(client), "stackyard_services_by_health", health="healthy") == 50


def test_samples_of_other_processes_are_added_up_from_the_multiprocess_folder(client, tmp_path, monkeypatch):
    """What runstack sets up: a worker process records a failure in PROMETHEUS_MULTIPROC_DIR, and the
    web's scrape reads it from there."""
    import os
    import subprocess
    import sys

    from django.conf import settings

    worker = ("from types import SimpleNamespace\nfrom core.metrics import task_failed\n"
              "for _ in range(3):\n    task_failed(sender=SimpleNamespace(name='runs.place_jobs'))\n")
    subprocess.run([sys.executable, "-c", worker], check=True, cwd=settings.BASE_DIR,
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert list(tmp_path.glob("counter_*.db"))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    samples = scrape(client)
    assert value(samples, "stackyard_task_failures_total", task="runs.place_jobs") == 3
    assert value(samples, "stackyard_runs", status="running") == 0  # the database gauges are there too


def test_runstack_empties_the_multiprocess_folder_at_start(tmp_path, monkeypatch):
    from ops.management.commands.runstack import fresh_metrics_dir

    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert fresh_metrics_dir() == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
