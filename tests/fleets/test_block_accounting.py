"""Block accounting: busy_blocks always equals the blocks of the instance's unfinished jobs."""

import itertools

import pytest
from django.db import connection
from django.db.models import IntegerField, OuterRef, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from core.models import Event
from fleets.blocks import verify_block_counts
from fleets.models import Instance
from runs.jobs import assign_job_to_instance, finish_job
from runs.models import JOB_ACTIVE_STATES, Job, JobStatus
from tests import factories


def held_blocks(instance_id: int) -> tuple[int, int, int]:
    """(busy_blocks, total_blocks, blocks held by unfinished jobs) read in one statement."""
    held = (Job.objects.filter(instance=OuterRef("pk"), status__in=JOB_ACTIVE_STATES).order_by().values("instance")
            .annotate(s=Sum("blocks")).values("s"))
    row = Instance.objects.filter(pk=instance_id).annotate(
        held=Coalesce(Subquery(held, output_field=IntegerField()), Value(0))
    ).values_list("busy_blocks", "total_blocks", "held").get()
    return row


@pytest.mark.django_db
def test_verification_corrects_drift_and_records_it(project, sim_backend, api):
    fleet = factories.FleetFactory(project=project, name="gpu8")
    drifted = factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0, busy_blocks=3,
                                        status="busy")
    right = factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=1, busy_blocks=2, status="busy")
    run = factories.RunFactory(project=project)
    factories.JobFactory(run=run, instance=drifted, blocks=1, status="running")
    factories.JobFactory(run=run, instance=right, blocks=2, status="running", replica_num=1)
    factories.JobFactory(run=run, instance=drifted, blocks=4, status="done", replica_num=2)  # finished: not held
    corrections = verify_block_counts()
    assert corrections == [{"instance": "gpu8-0", "before": 3, "after": 1}]
    assert held_blocks(drifted.pk) == (1, 8, 1) and held_blocks(right.pk) == (2, 8, 2)
    event = Event.objects.get(kind="block_count_corrected")
    assert event.resource_name == "gpu8-0" and "3 -> 1" in event.message
    assert verify_block_counts() == []
    assert "stackyard_block_count_corrections_total 1" in api.get("/metrics").content.decode()


@pytest.mark.django_db
def test_verification_uses_a_constant_number_of_queries(project, sim_backend):
    fleet = factories.FleetFactory(project=project, name="gpu8")

    def add(start: int, count: int) -> None:
        for n in range(start, start + count):
            instance = factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=n, busy_blocks=1,
                                                 status="busy")
            factories.JobFactory(run=factories.RunFactory(project=project), instance=instance, blocks=1,
                                 status="running")

    add(0, 1)
    with CaptureQueriesContext(connection) as one:
        verify_block_counts()
    add(1, 49)
    with CaptureQueriesContext(connection) as fifty:
        assert verify_block_counts() == []
    assert len(one) == len(fifty) == 1


@pytest.mark.django_db
def test_idle_is_busy_blocks_zero(project, sim_backend):
    instance = factories.InstanceFactory(fleet=factories.FleetFactory(project=project), backend=sim_backend,
                                         total_blocks=2)
    run = factories.RunFactory(project=project)
    jobs = [factories.JobFactory(run=run, replica_num=n) for n in range(3)]
    assert assign_job_to_instance(job=jobs[0], instance=instance, blocks=1)
    assert assign_job_to_instance(job=jobs[1], instance=instance, blocks=1)
    assert not assign_job_to_instance(job=jobs[2], instance=instance, blocks=1)  # full: refused, not clamped
    instance.refresh_from_db()
    assert (instance.status, instance.busy_blocks) == ("busy", 2)
    finish_job(job=Job.objects.get(pk=jobs[0].pk), to=JobStatus.DONE, reason="done")
    finish_job(job=Job.objects.get(pk=jobs[1].pk), to=JobStatus.FAILED, reason="exited_with_error")
    finish_job(job=Job.objects.get(pk=jobs[1].pk), to=JobStatus.FAILED, reason="exited_with_error")  # no double
    instance.refresh_from_db()
    assert (instance.status, instance.busy_blocks, instance.idle_since is not None) == ("idle", 0, True)


EXAMPLE_IDS = itertools.count()


class BlockMachine(RuleBasedStateMachine):
    """Random assign / release / fail / interrupt sequences keep the count exact and in bounds."""

    @initialize()
    def setup(self):
        # Examples share the test's transaction, so each one works on rows of its own.
        n = next(EXAMPLE_IDS)
        project = factories.ProjectFactory(name=f"hyp-{n}")
        backend = factories.BackendFactory(project=project, name=f"hyp-sim-{n}")
        self.fleet = factories.FleetFactory(project=project, name=f"hyp-fleet-{n}")
        self.instances = [factories.InstanceFactory(fleet=self.fleet, backend=backend, instance_num=n, total_blocks=t)
                          for n, t in enumerate((8, 4))]
        self.run = factories.RunFactory(project=project, name=f"hyp-run-{n}")
        self.next_replica = 0

    @rule(which=st.integers(0, 1), blocks=st.integers(1, 5))
    def assign(self, which, blocks):
        job = factories.JobFactory(run=self.run, replica_num=self.next_replica)
        self.next_replica += 1
        instance = Instance.objects.get(pk=self.instances[which].pk)
        assigned = assign_job_to_instance(job=job, instance=instance, blocks=blocks)
        assert assigned == (instance.status != "terminated" and blocks <= instance.idle_blocks)

    @rule(data=st.data(), outcome=st.sampled_from([(JobStatus.DONE, "done"), (JobStatus.FAILED, "exited_with_error"),
                                                   (JobStatus.TERMINATED, "stopped_by_user")]))
    def finish(self, data, outcome):
        live = list(Job.objects.filter(run=self.run, status__in=JOB_ACTIVE_STATES, instance__isnull=False))
        if live:
            job = data.draw(st.sampled_from(live))
            assert finish_job(job=job, to=outcome[0], reason=outcome[1])

    @rule(which=st.integers(0, 1))
    def interrupt(self, which):
        from fleets.instances import lose_instance
        from runs.workloads import Evictor

        lose_instance(Instance.objects.get(pk=self.instances[which].pk), reason="interrupted", message="test")
        Evictor().run()  # the job loop settles the jobs of the lost instance

    @invariant()
    def counts_are_exact(self):
        if not hasattr(self, "instances"):
            return
        for instance in self.instances:
            busy, total, held = held_blocks(instance.pk)
            assert busy == held and 0 <= busy <= total
            status = Instance.objects.get(pk=instance.pk).status
            assert status == "terminated" or status == ("busy" if busy else "idle")


@pytest.mark.django_db
def test_block_accounting_state_machine(project, sim_backend):
    Instance.objects.all().delete()
    machine = settings(max_examples=30, stateful_step_count=25, deadline=None,
                       suppress_health_check=list(HealthCheck))(BlockMachine)
    state = machine.TestCase()
    state.runTest()
