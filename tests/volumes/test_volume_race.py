"""Concurrency on PostgreSQL: jobs racing for one volume; exactly one gets it, the others nothing."""

import threading

import pytest
from django.db import connection

from fleets.models import Instance
from runs.configuration import parse_run_spec
from runs.jobs import assign_jobs
from runs.models import Job
from runs.placement import place_jobs
from runs.services import submit_run
from tests import factories
from volumes.models import Volume, VolumeAttachment

THREADS = 8


def _world(instances: int = THREADS):
    project = factories.ProjectFactory(name="main")
    backend = factories.BackendFactory(project=project, name="sim")
    fleet = factories.FleetFactory(project=project, name="cpu")
    nodes = [factories.InstanceFactory(fleet=fleet, backend=backend, instance_num=n, total_blocks=1,
                                       provider_instance_id=f"i-{n}", status="idle",
                                       resources={"cpus": 4, "memory_mib": 16384, "disk_gb": 100, "gpus": []})
             for n in range(instances)]
    volume = factories.VolumeFactory(project=project, backend=backend, name="data", availability_zone="eu-west-1a")
    return project, nodes, volume


def _in_threads(target, count: int = THREADS) -> list:
    barrier, errors = threading.Barrier(count), []

    def run(n):
        try:
            barrier.wait()
            target(n)
        except Exception as err:  # noqa: BLE001 - reported by the test
            errors.append(repr(err))
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return errors


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_jobs_assigned_at_once_with_one_volume_exactly_one_gets_it():
    project, nodes, volume = _world()
    spec = {"volumes": [{"name": ["data"], "path": "/data"}]}
    jobs = [factories.JobFactory(run=factories.RunFactory(project=project, name=f"r{n}", spec=spec), name=f"r{n}-0-0")
            for n in range(THREADS)]
    won = []

    def assign(n):
        job = Job.objects.select_related("run").get(pk=jobs[n].pk)
        won.extend(assign_jobs([(job, nodes[n], 1)], {job.pk: [("/data", Volume.objects.get(pk=volume.pk))]}))

    assert _in_threads(assign) == []
    assert len(won) == 1
    attachment = VolumeAttachment.objects.get()
    assert attachment.job_id == won[0] and attachment.status == "attaching"
    # The losers changed nothing: no blocks taken, still waiting for placement.
    assert Job.objects.filter(status="provisioning").count() == 1
    assert Job.objects.filter(status="submitted", instance__isnull=True).count() == THREADS - 1
    assert sorted(Instance.objects.values_list("busy_blocks", flat=True)) == [0] * (THREADS - 1) + [1]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_placement_passes_racing_for_one_volume_give_it_to_one_run():
    project, _, volume = _world()
    for n in range(THREADS):
        submit_run(project=project, spec=parse_run_spec({
            "type": "task", "name": f"r{n}", "commands": ["x"], "resources": {"cpu": 4, "gpu": 0},
            "volumes": ["data:/data"]}))
    assert _in_threads(lambda n: place_jobs(limit=1)) == []
    for _ in range(3):
        place_jobs()
    assert VolumeAttachment.objects.count() == 1
    holder = VolumeAttachment.objects.get().job
    assert holder.status == "provisioning"
    others = Job.objects.exclude(pk=holder.pk)
    # Everyone else was told the volume is taken, and holds nothing.
    assert set(others.values_list("status", flat=True)) == {"failed"}
    assert all("attached elsewhere" in message for message in others.values_list("status_message", flat=True))
    assert sum(Instance.objects.values_list("busy_blocks", flat=True)) == 1
