"""The sim driver's volumes: create, find, attach, detach and delete, and the volume faults."""

import threading

import pytest
from django.db import connection

from backends.drivers.base import FatalError, NotFoundError, TransientError
from backends.drivers.registry import get_driver
from backends.drivers.sim_faults import add_fault, clear_faults
from backends.models import Backend, SimVolume
from projects.models import Project
from tests.backends import test_sim_driver as sim_tests
from tests.backends.test_sim_driver import offer, running_instance, volume_in

pytestmark = pytest.mark.django_db

# The fixtures of test_sim_driver, bound here by name because pytest looks them up in the module.
project, backend, driver = sim_tests.project, sim_tests.backend, sim_tests.driver


# --- volumes --------------------------------------------------------------------------------------


def test_create_volume_picks_a_zone_when_none_is_given(driver):
    info = driver.create_volume(name="data", region="us-east-1", availability_zone=None, size_gb=50)
    assert (info.region, info.availability_zone, info.size_gb, info.status) == (
        "us-east-1",
        "us-east-1a",
        50,
        "available",
    )
    assert driver.register_volume(volume_id=info.volume_id) == info


@pytest.mark.parametrize(
    ("region", "zone"), [("mars-1", None), ("eu-west-1", "us-east-1a"), ("eu-west-1", "eu-west-1c")]
)
def test_create_volume_refuses_unknown_locations(driver, region, zone):
    with pytest.raises(FatalError):
        driver.create_volume(name="data", region=region, availability_zone=zone, size_gb=50)


def test_register_unknown_volume_is_not_found(driver):
    with pytest.raises(NotFoundError):
        driver.register_volume(volume_id="vol-nope")


def test_attach_detach_delete(driver):
    instance_id = running_instance(driver)
    first, second = volume_in(driver, "a"), volume_in(driver, "b")
    assert driver.attach_volume(volume_id=first, instance_id=instance_id) == "/dev/sdf"
    assert driver.attach_volume(volume_id=second, instance_id=instance_id) == "/dev/sdg"
    assert driver.attach_volume(volume_id=first, instance_id=instance_id) == "/dev/sdf"  # retried call
    assert driver.register_volume(volume_id=first).status == "in-use"
    with pytest.raises(FatalError):
        driver.delete_volume(volume_id=first)
    assert driver.is_volume_detached(volume_id=first, instance_id=instance_id) is False
    driver.detach_volume(volume_id=first, instance_id=instance_id, force=False)
    assert driver.is_volume_detached(volume_id=first, instance_id=instance_id) is True
    driver.detach_volume(volume_id=first, instance_id=instance_id, force=False)  # already detached: no-op
    driver.delete_volume(volume_id=first)
    driver.delete_volume(volume_id=first)  # already deleted: no-op
    with pytest.raises(NotFoundError):
        driver.register_volume(volume_id=first)
    assert [r.name for r in driver.list_tagged_resources()] == ["fleet-0", "b"]


def test_attach_refuses_a_volume_attached_elsewhere(driver):
    volume_id = volume_in(driver)
    driver.attach_volume(volume_id=volume_id, instance_id=running_instance(driver, "f-0"))
    with pytest.raises(FatalError, match="already attached"):
        driver.attach_volume(volume_id=volume_id, instance_id=running_instance(driver, "f-1"))


@pytest.mark.parametrize("instance_zone", ["eu-west-1b", "us-east-1a"])
def test_attach_refuses_another_zone_or_region(driver, instance_zone):
    volume_id = volume_in(driver, zone="eu-west-1a")
    with pytest.raises(FatalError, match="eu-west-1a"):
        driver.attach_volume(volume_id=volume_id, instance_id=running_instance(driver, zone=instance_zone))


def test_attach_to_a_provisioning_instance_is_transient(driver):
    instance_id = driver.create_instance(name="f-0", offer=offer(driver))
    with pytest.raises(TransientError):
        driver.attach_volume(volume_id=volume_in(driver), instance_id=instance_id)


def test_attach_to_a_terminated_instance_is_fatal(driver):
    instance_id = running_instance(driver)
    driver.terminate_instance(instance_id=instance_id)
    with pytest.raises(FatalError):
        driver.attach_volume(volume_id=volume_in(driver), instance_id=instance_id)


def test_volume_calls_given_a_region_see_only_that_regions_volumes(driver):
    instance_id, volume_id = running_instance(driver), volume_in(driver)  # both in eu-west-1a
    calls = [
        lambda region: driver.register_volume(volume_id=volume_id, region=region),
        lambda region: driver.detach_volume(volume_id=volume_id, instance_id=instance_id, force=False, region=region),
        lambda region: driver.is_volume_detached(volume_id=volume_id, instance_id=instance_id, region=region),
        lambda region: driver.delete_volume(volume_id=volume_id, region=region),
    ]
    driver.attach_volume(volume_id=volume_id, instance_id=instance_id, region="eu-west-1",
                         availability_zone="eu-west-1a")
    for call in calls:
        with pytest.raises(NotFoundError, match="us-east-1"):
            call("us-east-1")
    assert driver.register_volume(volume_id=volume_id).status == "in-use"  # nothing changed
    assert [call("eu-west-1") for call in calls][1:] == [None, True, None]
    with pytest.raises(NotFoundError):
        driver.register_volume(volume_id=volume_id, region="eu-west-1")  # deleted


@pytest.mark.parametrize(("region", "zone"), [("us-east-1", ""), ("eu-west-1", "eu-west-1b"), ("", "us-east-1a")])
def test_attach_refuses_a_volume_outside_the_given_region_or_zone(driver, region, zone):
    instance_id, volume_id = running_instance(driver), volume_in(driver)
    with pytest.raises(FatalError, match="eu-west-1a"):
        driver.attach_volume(volume_id=volume_id, instance_id=instance_id, region=region, availability_zone=zone)
    assert driver.register_volume(volume_id=volume_id).status == "available"


def test_terminating_an_instance_frees_its_volumes(driver):
    instance_id, volume_id = running_instance(driver), volume_in(driver)
    driver.attach_volume(volume_id=volume_id, instance_id=instance_id)
    driver.terminate_instance(instance_id=instance_id)
    assert driver.is_volume_detached(volume_id=volume_id, instance_id=instance_id)
    assert driver.register_volume(volume_id=volume_id).status == "available"


# --- volume faults ---------------------------------------------------------------------------------


def test_stuck_detach_completes_only_when_forced_and_forced_ok(driver, backend):
    add_fault(backend, {"kind": "stuck_detach", "volume": "vol", "forced_ok": True})
    instance_id, volume_id = running_instance(driver), volume_in(driver, "vol")
    driver.attach_volume(volume_id=volume_id, instance_id=instance_id)
    driver.detach_volume(volume_id=volume_id, instance_id=instance_id, force=False)
    assert not driver.is_volume_detached(volume_id=volume_id, instance_id=instance_id)
    assert not driver.is_volume_detached(volume_id=volume_id, instance_id=instance_id)
    with pytest.raises(FatalError, match="being detached"):
        driver.attach_volume(volume_id=volume_id, instance_id=instance_id)
    driver.detach_volume(volume_id=volume_id, instance_id=instance_id, force=True)
    assert driver.is_volume_detached(volume_id=volume_id, instance_id=instance_id)


def test_stuck_detach_without_forced_ok_holds_until_cleared(driver, backend):
    add_fault(backend, {"kind": "stuck_detach", "volume": "vol", "forced_ok": False})
    instance_id, volume_id = running_instance(driver), volume_in(driver, "vol")
    other_id = volume_in(driver, "other")
    for v in (volume_id, other_id):
        driver.attach_volume(volume_id=v, instance_id=instance_id)
        driver.detach_volume(volume_id=v, instance_id=instance_id, force=False)
    assert not driver.is_volume_detached(volume_id=volume_id, instance_id=instance_id)
    assert not driver.is_volume_detached(volume_id=volume_id, instance_id=instance_id)
    assert driver.is_volume_detached(volume_id=other_id, instance_id=instance_id)  # the fault names one volume
    assert clear_faults(backend, "stuck_detach") == 1
    assert driver.is_volume_detached(volume_id=volume_id, instance_id=instance_id)


def test_stuck_detach_without_forced_ok_refuses_a_forced_detach_and_changes_nothing(driver, backend):
    add_fault(backend, {"kind": "stuck_detach", "volume": "vol", "forced_ok": False})
    instance_id, volume_id = running_instance(driver), volume_in(driver, "vol")
    driver.attach_volume(volume_id=volume_id, instance_id=instance_id)
    with pytest.raises(FatalError, match=r"forced detach .* failed \(stuck_detach fault, forced_ok false\)"):
        driver.detach_volume(volume_id=volume_id, instance_id=instance_id, force=True)
    assert SimVolume.objects.filter(volume_id=volume_id, detach_requested=False, detach_forced=False).exists()
    assert driver.attach_volume(volume_id=volume_id, instance_id=instance_id) == "/dev/sdf"  # still attached
    clear_faults(backend)
    driver.detach_volume(volume_id=volume_id, instance_id=instance_id, force=True)
    assert driver.is_volume_detached(volume_id=volume_id, instance_id=instance_id)


def detach_answers(driver, volume_id, instance_id, asks):
    return [driver.is_volume_detached(volume_id=volume_id, instance_id=instance_id) for _ in range(asks)]


def test_slow_detach_answers_false_polls_times_then_completes(driver, backend):
    add_fault(backend, {"kind": "slow_detach", "volume": "vol", "polls": 3})
    instance_id, volume_id, other_id = running_instance(driver), volume_in(driver, "vol"), volume_in(driver, "b")
    for v in (volume_id, other_id):
        driver.attach_volume(volume_id=v, instance_id=instance_id)
    assert detach_answers(driver, volume_id, instance_id, 2) == [False, False]  # no detach asked: not counted
    assert SimVolume.objects.get(volume_id=volume_id).detach_polls == 0
    for v in (volume_id, other_id):
        driver.detach_volume(volume_id=v, instance_id=instance_id, force=False)
    assert detach_answers(driver, volume_id, instance_id, 5) == [False, False, False, True, True]
    assert driver.is_volume_detached(volume_id=other_id, instance_id=instance_id)  # the fault names one volume
    assert SimVolume.objects.get(volume_id=volume_id).detach_polls == 0  # reset when the detach completed
    # A second attach and detach is slow again, from zero.
    driver.attach_volume(volume_id=volume_id, instance_id=instance_id)
    driver.detach_volume(volume_id=volume_id, instance_id=instance_id, force=True)
    assert detach_answers(driver, volume_id, instance_id, 4) == [False, False, False, True]


def test_attach_resets_the_detach_poll_count(driver, backend):
    instance_id, volume_id = running_instance(driver), volume_in(driver, "vol")
    SimVolume.objects.filter(volume_id=volume_id).update(detach_polls=7)  # left over by an older detach
    driver.attach_volume(volume_id=volume_id, instance_id=instance_id)
    assert SimVolume.objects.get(volume_id=volume_id).detach_polls == 0


def test_slow_detach_added_mid_detach_and_cleared_early(driver, backend):
    instance_id, volume_id = running_instance(driver), volume_in(driver, "vol")
    driver.attach_volume(volume_id=volume_id, instance_id=instance_id)
    driver.detach_volume(volume_id=volume_id, instance_id=instance_id, force=False)
    add_fault(backend, {"kind": "slow_detach", "volume": "vol", "polls": 1000})
    assert detach_answers(driver, volume_id, instance_id, 2) == [False, False]
    clear_faults(backend, "slow_detach")
    assert driver.is_volume_detached(volume_id=volume_id, instance_id=instance_id)


SLOW_POLLS, ASKERS = 5, 12


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_slow_detach_counts_each_concurrent_ask_once():
    backend = Backend.objects.create(project=Project.objects.create(name="race"), name="sim", type="sim", config={})
    driver = get_driver(backend)
    instance_id, volume_id = running_instance(driver), volume_in(driver, "vol")
    driver.attach_volume(volume_id=volume_id, instance_id=instance_id)
    add_fault(backend, {"kind": "slow_detach", "volume": "vol", "polls": SLOW_POLLS})
    driver.detach_volume(volume_id=volume_id, instance_id=instance_id, force=False)
    barrier, answers = threading.Barrier(ASKERS), []

    def ask():
        try:
            barrier.wait()
            answers.append(get_driver(backend).is_volume_detached(volume_id=volume_id, instance_id=instance_id))
        finally:
            connection.close()

    threads = [threading.Thread(target=ask) for _ in range(ASKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(answers) == [False] * SLOW_POLLS + [True] * (ASKERS - SLOW_POLLS)
    assert SimVolume.objects.get(volume_id=volume_id).detach_polls == 0


def test_stuck_attach_is_transient_and_attaches_nothing_until_cleared(driver, backend):
    add_fault(backend, {"kind": "stuck_attach", "volume": "vol"})
    instance_id, volume_id = running_instance(driver), volume_in(driver, "vol")
    assert driver.attach_volume(volume_id=volume_in(driver, "other"), instance_id=instance_id) == "/dev/sdf"
    for _ in range(2):
        with pytest.raises(TransientError, match=r"still attaching \(stuck_attach fault\)"):
            driver.attach_volume(volume_id=volume_id, instance_id=instance_id)
    assert driver.register_volume(volume_id=volume_id).status == "available"
    assert driver.is_volume_detached(volume_id=volume_id, instance_id=instance_id)
    clear_faults(backend, "stuck_attach")
    assert driver.attach_volume(volume_id=volume_id, instance_id=instance_id) == "/dev/sdg"
    add_fault(backend, {"kind": "stuck_attach", "volume": "vol"})
    # Already attached: a retried attach answers its device, there is nothing left to get stuck.
    assert driver.attach_volume(volume_id=volume_id, instance_id=instance_id) == "/dev/sdg"


def test_fail_volume_create_fault_fails_every_create_or_only_the_named_volume(driver, backend):
    add_fault(backend, {"kind": "fail_volume_create", "volume": "data"})
    with pytest.raises(FatalError, match=r"'data' .*\(fail_volume_create fault\)"):
        volume_in(driver, "data")
    assert volume_in(driver, "other")
    add_fault(backend, {"kind": "fail_volume_create"})
    with pytest.raises(FatalError, match="fail_volume_create"):
        volume_in(driver, "other")
    clear_faults(backend)
    assert volume_in(driver, "data")


def test_fail_volume_create_answers_a_retry_whose_token_already_made_the_volume(driver, backend):
    def create():
        return driver.create_volume(name="data", region="eu-west-1", availability_zone=None, size_gb=10,
                                    client_token="tok-1")

    made = create()
    add_fault(backend, {"kind": "fail_volume_create", "volume": "data"})
    assert create() == made
    assert driver.find_volume(client_token="tok-1") == made
    with pytest.raises(FatalError):
        driver.create_volume(name="data", region="eu-west-1", availability_zone=None, size_gb=10,
                             client_token="tok-2")
    assert driver.find_volume(client_token="tok-2") is None
