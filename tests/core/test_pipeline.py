"""The reconcile pipeline itself: fair claims, batches until nothing is due, once per pass, a time
budget, backoff with the error shown, and a broken batch that does not stop the loop."""

import time
from datetime import timedelta

import pytest
from django.db.models import Q
from django.utils import timezone

from core.pipeline import Reconciler, Step, backoff
from fleets.models import Instance
from tests import factories


class Recorder(Reconciler):
    """Processes every instance; remembers the order it saw them in."""

    model = Instance

    def __init__(self, *, batch_size=2, step=None, call_error=None, delay=0.0):
        self.batch_size = batch_size
        self.seen: list[int] = []
        self.step = step or Step(changed=True)
        self.call_error = call_error
        self.delay = delay

    def due(self) -> Q:
        return Q()

    def call(self, rows):
        time.sleep(self.delay)
        if self.call_error:
            raise self.call_error
        return {row.pk: "ok" for row in rows}

    def record(self, row, result) -> Step:
        self.seen.append(row.pk)
        return self.step


@pytest.fixture
def instances(project, sim_backend):
    fleet = factories.FleetFactory(project=project, name="fleet")
    return [factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=n) for n in range(5)]


def test_a_pass_takes_batches_until_nothing_is_due_and_each_row_once(instances):
    loop = Recorder(batch_size=2)
    assert loop.run() == 5
    assert sorted(loop.seen) == sorted(i.pk for i in instances) and len(loop.seen) == 5


def test_claims_are_fair_the_row_processed_longest_ago_goes_first(instances):
    now = timezone.now()
    # The highest primary keys were processed longest ago: they must come first, whatever their pk.
    for age, instance in enumerate(instances):
        Instance.objects.filter(pk=instance.pk).update(last_processed_at=now - timedelta(minutes=age))
    loop = Recorder(batch_size=1)
    loop.run()
    assert loop.seen == [i.pk for i in reversed(instances)]


def test_never_processed_rows_come_before_processed_ones(instances):
    Instance.objects.filter(pk__in=[i.pk for i in instances[:3]]).update(last_processed_at=timezone.now()
                                                                         - timedelta(hours=1))
    loop = Recorder(batch_size=1)
    loop.run()
    assert loop.seen[:2] == [instances[3].pk, instances[4].pk]


def test_a_pass_stops_when_its_budget_is_spent(instances):
    loop = Recorder(batch_size=1, delay=0.2)
    loop.run(budget=0.3)
    assert 1 <= len(loop.seen) <= 2
    following = Recorder(batch_size=1)
    following.run()  # the next pass starts with the rows this one could not reach
    assert set(following.seen[:5 - len(loop.seen)]) == {i.pk for i in instances} - set(loop.seen)


def test_a_row_asked_to_rest_is_left_alone_until_then(instances):
    Recorder(step=Step(after=60)).run()
    assert Recorder().run() == 0
    assert all(i.lease_until > timezone.now() and i.lease_owner == "" for i in Instance.objects.all())


def test_failures_are_shown_and_back_off_exponentially(instances):
    Recorder(step=Step(failed="provider error, retrying: boom")).run()
    first = Instance.objects.get(pk=instances[0].pk)
    assert first.status_message == "provider error, retrying: boom" and first.failures == 1
    assert first.lease_until >= timezone.now() + timedelta(seconds=backoff(1) - 1)
    Instance.objects.update(lease_until=None)
    Recorder(step=Step(failed="again")).run()
    second = Instance.objects.get(pk=instances[0].pk)
    assert second.failures == 2 and second.lease_until - timezone.now() > timedelta(seconds=backoff(1))
    Instance.objects.update(lease_until=None)
    Recorder(step=Step(changed=True)).run()
    assert Instance.objects.get(pk=instances[0].pk).failures == 0
    assert [backoff(n) for n in (1, 2, 3, 30)] == [2, 4, 8, 300]


def test_a_call_that_raises_marks_its_batch_failed_and_the_loop_goes_on(instances):
    loop = Recorder(batch_size=2, call_error=RuntimeError("driver bug"))
    assert loop.run() == 0
    messages = set(Instance.objects.values_list("status_message", flat=True))
    assert messages == {"driver bug"} or all("driver bug" in m for m in messages)
    assert all(i.failures == 1 for i in Instance.objects.all())


def test_a_slow_batch_keeps_its_lease_so_nobody_repeats_its_calls(instances):
    from core import leases

    taken_over = []

    class Slow(Recorder):
        lease_seconds = 1

        def call(self, rows):
            for _ in rows:
                self.keep_lease()
                time.sleep(0.4)
                taken_over.extend(leases.claim(Instance, Q(), owner=leases.new_owner()))
            return {row.pk: "ok" for row in rows}

    Slow(batch_size=5).run()
    assert taken_over == []  # 2 s of calls on a 1 s lease, and no row was claimed by anyone else


def test_drivers_ask_one_call_per_backend_and_a_failure_answers_only_its_rows():
    from types import SimpleNamespace

    from core.pipeline import Drivers

    class ProviderDown(Exception):
        pass

    a, b = SimpleNamespace(pk=1, name="a"), SimpleNamespace(pk=2, name="b")
    rows = [SimpleNamespace(pk=n, backend=backend) for n, backend in ((10, a), (11, b), (12, a))]
    calls = []

    def call(driver, group):
        calls.append((driver, [row.pk for row in group]))
        if driver == "driver-b":
            raise ProviderDown("throttled")
        return {row.pk: "ok" for row in group}

    drivers = Drivers(lambda backend: f"driver-{backend.name}", errors=ProviderDown)
    answers = drivers.ask(rows, lambda row: row.backend, call)
    assert calls == [("driver-a", [10, 12]), ("driver-b", [11])]
    assert answers[10] == answers[12] == "ok" and isinstance(answers[11], ProviderDown)
    with pytest.raises(KeyError):  # not the provider's error: a bug, which fails the whole batch
        drivers.ask(rows, lambda row: row.backend, lambda driver, group: {}[0])
