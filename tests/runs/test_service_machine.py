"""A hypothesis state machine drives a service with retry through the sim: crashes, interruptions,
probe failures, scale changes, stops and aborts. After every step: no replica has two live
submissions, a failure never stops a healthy replica, and block counts stay exact."""

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fleets.models import Instance
from runs.models import JOB_ACTIVE_STATES, RUN_FINISHED_STATES, Job, Run
from tests.conftest import client_for, reconcile_pass
from tests.fleets.test_block_accounting import held_blocks

P = "/api/v1/projects/main"
FLEET = "type: fleet\nname: gpu8\nnodes: 3\nbackends: [sim]\nresources:\n  gpu: H100:8\nblocks: 8\n"
SERVICE = ("type: service\nname: svc\ncommands: [serve]\nport: 8000\nreplicas: {replicas}\nresources: {{gpu: 1}}\n"
           "probes: [{{type: http, url: /health}}]\n"
           "retry: {{on_events: [error, interruption, no-capacity], interval: 0s}}\n")


def drive(rounds: int = 12) -> None:
    from volumes.models import VolumeAttachment

    quiet = 0
    for _ in range(rounds):
        for model in (Instance, Job, VolumeAttachment):
            model.objects.update(lease_until=None, lease_owner="")
        quiet = 0 if reconcile_pass() else quiet + 1
        if quiet == 2:
            return


class ServiceMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        from django.contrib.auth import get_user_model

        self.reset()
        user = get_user_model().objects.get(username="alice")
        self.api = client_for(user)
        self.replicas = 3
        self.apply(SERVICE.format(replicas=self.replicas))
        drive()

    # --- helpers --------------------------------------------------------------------------------

    @staticmethod
    def reset() -> None:
        """A fresh world for each example: the last one's run is aborted and forgotten, faults cleared."""
        from backends.sim_models import SimFault

        SimFault.objects.all().delete()
        for run in Run.objects.exclude(status__in=RUN_FINISHED_STATES):
            from runs.services import stop_run
            stop_run(run=run, abort=True)
        drive()
        assert not Run.objects.exclude(status__in=RUN_FINISHED_STATES).exists()
        Run.objects.all().delete()

    def apply(self, text: str, expect=(200, 201, 202)) -> None:
        response = self.api.post(f"{P}/apply/", data=text, content_type="application/yaml")
        assert response.status_code in expect, response.content

    def run(self) -> Run:
        return Run.objects.get(name="svc")

    def latest(self) -> dict[int, Job]:
        jobs = {}
        for job in Job.objects.filter(run__name="svc").exclude(termination_reason="scaled_down").order_by(
                "replica_num", "submission_num"):
            jobs[job.replica_num] = job
        return jobs

    def running(self) -> dict[int, Job]:
        return {r: j for r, j in self.latest().items() if j.status == "running"}

    def fault(self, **params) -> None:
        assert self.api.post(f"{P}/backends/sim/faults/", params, format="json").status_code in (200, 201)

    def clear(self, kind: str) -> None:
        self.api.delete(f"{P}/backends/sim/faults/?kind={kind}")

    def active(self) -> bool:
        return self.run().status not in RUN_FINISHED_STATES

    def assert_untouched(self, before: dict[int, Job], spared: set[int]) -> None:
        """Replicas that were running and were not the target still run the same job row."""
        now = self.latest()
        for replica, job in before.items():
            if replica in spared:
                continue
            assert now[replica].pk == job.pk and now[replica].status == "running", (replica, job, now[replica])

    # --- rules ------------------------------------------------------------------------------------

    @precondition(lambda self: self.active())
    @rule(pick=st.integers(0, 9))
    def crash(self, pick):
        running = self.running()
        if not running:
            return
        target = sorted(running)[pick % len(running)]
        before = dict(running)
        self.fault(kind="crash_job", job=running[target].name, exit_status=1)
        drive(rounds=3)
        self.clear("crash_job")
        drive()
        self.assert_untouched(before, spared={target})
        again = self.latest()[target]  # retried alone, and running again
        assert again.submission_num > before[target].submission_num and again.status == "running", again
        assert self.run().status == "running"

    @precondition(lambda self: self.active())
    @rule(pick=st.integers(0, 9))
    def interrupt(self, pick):
        running = self.running()
        if not running:
            return
        names = sorted({j.instance.name for j in running.values()})
        instance = names[pick % len(names)]
        before = dict(running)
        on_it = {r for r, j in running.items() if j.instance.name == instance}
        self.fault(kind="interrupt_instance", instance=instance)
        drive()
        self.clear("interrupt_instance")
        drive()
        self.assert_untouched(before, spared=on_it)
        for replica in on_it:  # resubmitted elsewhere
            again = self.latest()[replica]
            assert again.status == "running" and again.instance.name != instance, again

    @precondition(lambda self: self.active())
    @rule(pick=st.integers(0, 9), fail=st.booleans())
    def probes(self, pick, fail):
        running = self.running()
        if not running:
            return
        target = sorted(running)[pick % len(running)]
        before = dict(running)
        if fail:
            self.fault(kind="probe_fail", job=running[target].name)
        else:
            self.clear("probe_fail")
        drive(rounds=4)
        self.assert_untouched(before, spared=set())  # a failing probe never stops anything

    @precondition(lambda self: self.active())
    @rule(replicas=st.integers(1, 5))
    def scale(self, replicas):
        before = self.running()
        self.apply(SERVICE.format(replicas=replicas))
        drive()
        kept = {r for r in sorted(before)[:min(replicas, len(before))]}
        self.replicas = replicas
        self.assert_untouched({r: j for r, j in before.items() if r in kept}, spared=set())

    @precondition(lambda self: self.active())
    @rule(abort=st.booleans())
    def stop(self, abort):
        assert self.api.post(f"{P}/runs/svc/stop/", {"abort": abort}, format="json").status_code == 202
        drive()
        assert self.run().status == "terminated", self.run().status

    @precondition(lambda self: not self.active())
    @rule()
    def resubmit(self):
        self.clear("probe_fail")
        self.apply(SERVICE.format(replicas=self.replicas))
        drive()

    # --- invariants ---------------------------------------------------------------------------------

    @invariant()
    def one_live_submission_per_replica(self):
        live = {}
        for job in Job.objects.filter(run__name="svc", status__in=JOB_ACTIVE_STATES):
            key = (job.replica_num, job.job_num)
            assert key not in live, f"replica {key} has two live submissions"
            live[key] = job

    @invariant()
    def block_counts_are_exact(self):
        for instance in Instance.objects.exclude(status="terminated"):
            busy, total, held = held_blocks(instance.pk)
            assert busy == held and 0 <= busy <= total, (instance.name, busy, held, total)


@pytest.mark.django_db
def test_service_state_machine(project, sim_backend, apply, reconcile):
    apply(FLEET)  # ``apply`` is alice's client: the machine drives the API as her
    reconcile()
    machine = settings(max_examples=10, stateful_step_count=10, deadline=None,
                       suppress_health_check=list(HealthCheck))(ServiceMachine)
    machine.TestCase().runTest()
