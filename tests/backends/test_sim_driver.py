"""The sim driver: catalogue, instances, job scripts, faults and config validation (volumes: test_sim_volumes)."""

import datetime
import functools
import random

import pytest
from django.utils import timezone

from backends.drivers import sim as sim_module
from backends.drivers.base import (
    Driver,
    FatalError,
    JobLaunch,
    JobState,
    NoCapacityError,
    NotFoundError,
    TaggedResource,
    TransientError,
)
from backends.drivers.registry import driver_class, get_driver, supported_types
from backends.drivers.sim import SimDriver, plan_script
from backends.drivers.sim_faults import add_fault, clear_faults, list_faults, validate_fault
from backends.models import Backend, SimJob
from core.errors import InvalidInput
from projects.models import Project

pytestmark = pytest.mark.django_db


@pytest.fixture
def project():
    return Project.objects.create(name="p")


@pytest.fixture
def backend(project):
    return Backend.objects.create(project=project, name="sim", type="sim", config={})


@pytest.fixture
def driver(backend):
    return get_driver(backend)


@pytest.fixture
def clock(monkeypatch):
    """Freeze ``timezone.now`` and move it by hand, so job timing needs no real sleeping."""

    class Clock:
        now = timezone.now()

        def advance(self, seconds: float) -> None:
            self.now += datetime.timedelta(seconds=seconds)

    clock = Clock()
    monkeypatch.setattr(timezone, "now", lambda: clock.now)
    return clock


def offer(driver, zone="eu-west-1a", instance_type="cpu-4", spot=False):
    return next(
        o
        for o in driver.offers()
        if o.availability_zone == zone and o.instance_type == instance_type and o.spot == spot
    )


MANAGED = {"stackyard-managed": "true"}


def running_instance(driver, name="fleet-0", zone="eu-west-1a"):
    instance_id = driver.create_instance(name=name, offer=offer(driver, zone=zone), tags=MANAGED)
    driver.instance_state(instance_id=instance_id)  # the first poll reports provisioning
    return instance_id


def volume_in(driver, name="vol", zone="eu-west-1a"):
    return driver.create_volume(name=name, region=zone[:-1], availability_zone=zone, size_gb=100,
                                tags=MANAGED).volume_id


# --- registry and config --------------------------------------------------------------------------


def test_registry_serves_sim_aws_and_local(backend):
    assert supported_types() == ["aws", "local", "sim"]
    assert isinstance(get_driver(backend), SimDriver)
    with pytest.raises(InvalidInput) as exc:
        driver_class("gce")
    assert exc.value.code == "unsupported_backend_type"


def test_default_offers_cover_every_type_zone_and_pricing(driver):
    offers = driver.offers()
    zones = {o.availability_zone for o in offers}
    assert zones == {"eu-west-1a", "eu-west-1b", "us-east-1a", "us-east-1b"}
    assert {o.region for o in offers} == {"eu-west-1", "us-east-1"}
    gpu_counts = {o.instance_type: len(o.resources["gpus"]) for o in offers}
    assert {0, 1, 8} <= set(gpu_counts.values())
    assert len(offers) == len(gpu_counts) * len(zones) * 2
    for o in offers:
        assert set(o.resources) == {"cpus", "memory_mib", "gpus", "disk_gb"}
        assert all(set(g) == {"name", "memory_mib"} for g in o.resources["gpus"])
        assert o.availability_zone.startswith(o.region)
    on_demand = offer(driver, instance_type="gpu-a100-8")
    spot = offer(driver, instance_type="gpu-a100-8", spot=True)
    assert 0 < spot.price < on_demand.price
    assert on_demand.resources["gpus"] == [{"name": "A100", "memory_mib": 80 * 1024}] * 8


def test_custom_regions_and_instance_types_replace_the_defaults(project):
    custom = {"name": "tiny", "cpus": 2, "memory_mib": 4096, "gpus": [], "disk_gb": 20, "price": 0.05}
    backend = Backend.objects.create(
        project=project, name="c", type="sim", config={"regions": ["mars-1"], "instance_types": [custom]}
    )
    offers = get_driver(backend).offers()
    assert {(o.instance_type, o.availability_zone, o.spot) for o in offers} == {
        ("tiny", "mars-1a", False),
        ("tiny", "mars-1a", True),
        ("tiny", "mars-1b", False),
        ("tiny", "mars-1b", True),
    }


def test_validate_config_keeps_only_given_keys():
    assert SimDriver.validate_config({}) == {}
    assert SimDriver.validate_config({"latency": 1}) == {"latency": 1.0}


GOOD_TYPE = {"name": "t", "cpus": 2, "memory_mib": 4096, "gpus": [], "disk_gb": 20, "price": 0.1}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"zones": ["a"]}, "zones"),
        ({"regions": "eu-west-1"}, "regions"),
        ({"regions": []}, "regions"),
        ({"regions": ["eu-west-1", ""]}, "regions[1]"),
        ({"latency": -1}, "latency"),
        ({"latency": "fast"}, "latency"),
        ({"instance_types": "cpu-4"}, "instance_types"),
        ({"instance_types": [{k: v for k, v in GOOD_TYPE.items() if k != "cpus"}]}, "instance_types[0].cpus"),
        ({"instance_types": [{**GOOD_TYPE, "cpus": 0}]}, "instance_types[0].cpus"),
        ({"instance_types": [{**GOOD_TYPE, "colour": "red"}]}, "instance_types[0].colour"),
        ({"instance_types": [{**GOOD_TYPE, "gpus": [{"name": "A10G"}]}]}, "instance_types[0].gpus[0].memory_mib"),
        ({"instance_types": [GOOD_TYPE, GOOD_TYPE]}, "instance_types"),
    ],
)
def test_validate_config_names_the_bad_key(config, field):
    with pytest.raises(InvalidInput) as exc:
        SimDriver.validate_config(config)
    assert exc.value.extra["field"] == field
    assert field.split("[")[0].split(".")[0] in exc.value.detail


def test_a_stored_invalid_config_is_a_fatal_driver_error(project):
    backend = Backend.objects.create(project=project, name="bad", type="sim", config={"latency": -5})
    with pytest.raises(FatalError):
        get_driver(backend)


def test_latency_sleeps_on_every_call(project, monkeypatch):
    sleeps = []
    monkeypatch.setattr(sim_module.time, "sleep", sleeps.append)
    slow = get_driver(Backend.objects.create(project=project, name="slow", type="sim", config={"latency": 0.25}))
    slow.offers()
    slow.list_tagged_resources()
    assert sleeps == [0.25, 0.25]


def test_no_latency_by_default(driver, monkeypatch):
    sleeps = []
    monkeypatch.setattr(sim_module.time, "sleep", sleeps.append)
    driver.offers()
    assert sleeps == []


# --- instances ------------------------------------------------------------------------------------


def test_instance_lifecycle(driver):
    tags = {"stackyard-managed": "true", "stackyard-instance": "fleet-0"}
    instance_id = driver.create_instance(name="fleet-0", offer=offer(driver, spot=True), tags=tags)
    assert driver.instance_state(instance_id=instance_id) == "provisioning"
    assert driver.instance_state(instance_id=instance_id) == "running"
    [listed] = driver.list_tagged_resources()
    assert listed == TaggedResource("instance", instance_id, "fleet-0", "eu-west-1", "eu-west-1a",
                                    listed.created_at, tags)
    assert listed.created_at is not None
    driver.terminate_instance(instance_id=instance_id)
    driver.terminate_instance(instance_id=instance_id)  # a retried terminate is harmless
    assert driver.instance_state(instance_id=instance_id) == "terminated"
    assert driver.list_tagged_resources() == []


def test_unknown_instance_is_not_found(driver):
    with pytest.raises(NotFoundError):
        driver.instance_state(instance_id="i-nope")
    with pytest.raises(NotFoundError):
        driver.terminate_instance(instance_id="i-nope")


def test_instances_of_another_backend_are_not_visible(driver, project):
    other = get_driver(Backend.objects.create(project=project, name="other", type="sim", config={}))
    instance_id = running_instance(other)
    with pytest.raises(NotFoundError):
        driver.instance_state(instance_id=instance_id)


def test_create_instance_refuses_an_offer_this_backend_does_not_have(driver):
    wrong_zone = offer(driver)
    wrong_zone = type(wrong_zone)(**{**wrong_zone.__dict__, "availability_zone": "us-east-1a"})
    with pytest.raises(FatalError):
        driver.create_instance(name="x", offer=wrong_zone)


# --- jobs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("commands", "plan"),
    [
        ([], (None, None)),
        (["python train.py"], (None, None)),
        (["sleep 2"], (2.0, 0)),
        (["sleep 0.5", "sleep 1"], (1.5, 0)),
        (["exit 3"], (0.0, 3)),
        (["echo hi && sleep 2; exit 1"], (2.0, 1)),
        (["exit 0", "sleep 10"], (0.0, 0)),
        (["sleep 1", "exit 256"], (1.0, 0)),
        (["sleep infinity"], (None, None)),
    ],
)
def test_plan_script(commands, plan):
    assert plan_script(commands) == plan


def start(driver, instance_id, commands, job_name="run-0-0"):
    return driver.start_job(job_name=job_name, instance_id=instance_id, commands=commands, env={"A": "1"})


def test_a_job_without_sleep_or_exit_runs_until_stopped(driver, clock):
    workload_id = start(driver, running_instance(driver), ["python serve.py"])
    clock.advance(3600)
    assert driver.poll_job(workload_id=workload_id) == JobState("running", None)
    driver.stop_job(workload_id=workload_id)
    driver.stop_job(workload_id=workload_id)  # stopping a stopped job is harmless
    assert driver.poll_job(workload_id=workload_id).status == "stopped"


def test_sleep_finishes_the_job_after_n_seconds(driver, clock):
    workload_id = start(driver, running_instance(driver), ["sleep 5"])
    clock.advance(4.9)
    assert driver.poll_job(workload_id=workload_id).status == "running"
    clock.advance(0.1)
    assert driver.poll_job(workload_id=workload_id) == JobState("done", 0, "exited with status 0")


def test_sleep_in_real_time(driver):
    workload_id = start(driver, running_instance(driver), ["sleep 0.05", "exit 2"])
    assert driver.poll_job(workload_id=workload_id).status == "running"
    sim_module.time.sleep(0.06)
    state = driver.poll_job(workload_id=workload_id)
    assert (state.status, state.exit_status) == ("failed", 2)


def test_exit_without_sleep_finishes_at_once(driver, clock):
    instance_id = running_instance(driver)
    assert driver.poll_job(workload_id=start(driver, instance_id, ["exit 0"])).status == "done"
    failed = driver.poll_job(workload_id=start(driver, instance_id, ["exit 7"]))
    assert (failed.status, failed.exit_status) == ("failed", 7)


def test_stopping_a_job_that_already_ended_keeps_its_outcome(driver, clock):
    workload_id = start(driver, running_instance(driver), ["sleep 1"])
    clock.advance(2)
    driver.stop_job(workload_id=workload_id)
    assert driver.poll_job(workload_id=workload_id).status == "done"


def test_unknown_workload_is_not_found(driver):
    with pytest.raises(NotFoundError):
        driver.poll_job(workload_id="w-nope")
    with pytest.raises(NotFoundError):
        driver.stop_job(workload_id="w-nope")


def test_start_job_needs_a_running_instance(driver):
    provisioning = driver.create_instance(name="f-0", offer=offer(driver))
    with pytest.raises(TransientError):
        start(driver, provisioning, ["sleep 1"])
    driver.terminate_instance(instance_id=provisioning)
    with pytest.raises(FatalError):
        start(driver, provisioning, ["sleep 1"])
    with pytest.raises(NotFoundError):
        start(driver, "i-nope", ["sleep 1"])


def test_start_job_keeps_its_mounts(driver):
    instance_id, volume_id = running_instance(driver), volume_in(driver)
    device = driver.attach_volume(volume_id=volume_id, instance_id=instance_id)
    mounts = [{"path": "/data", "volume_id": volume_id, "device_name": device},
              {"path": "/cache", "instance_path": "/mnt/cache"}]
    workload_id = driver.start_job(job_name="r-0-0", instance_id=instance_id, commands=[], env={}, mounts=mounts)
    assert SimJob.objects.get(workload_id=workload_id).mounts == mounts
    assert SimJob.objects.get(workload_id=start(driver, instance_id, [])).mounts == []  # no mounts given


def test_a_job_never_starts_without_its_network_volume(driver):
    instance_id, other_id = running_instance(driver, "f-0"), running_instance(driver, "f-1")
    detached, elsewhere, leaving = volume_in(driver, "a"), volume_in(driver, "b"), volume_in(driver, "c")
    driver.attach_volume(volume_id=elsewhere, instance_id=other_id)
    driver.attach_volume(volume_id=leaving, instance_id=instance_id)
    driver.detach_volume(volume_id=leaving, instance_id=instance_id, force=False)  # requested, not yet done
    for volume_id in (detached, elsewhere, leaving, "vol-nope"):
        mounts = [{"path": "/cache", "instance_path": "/mnt"}, {"path": "/data", "volume_id": volume_id}]
        with pytest.raises(FatalError, match=f"volume {volume_id} is not attached to instance {instance_id}"):
            driver.start_job(job_name="r-0-0", instance_id=instance_id, commands=[], env={}, mounts=mounts)
    assert not SimJob.objects.exists()


@pytest.mark.parametrize("batched", [True, False])
def test_start_jobs_checks_and_keeps_each_launchs_mounts(driver, batched):
    instance_id, volume_id = running_instance(driver), volume_in(driver)
    driver.attach_volume(volume_id=volume_id, instance_id=instance_id)
    good = [{"path": "/data", "volume_id": volume_id, "device_name": "/dev/sdf"}]
    bad = [{"path": "/data", "volume_id": volume_in(driver, "unattached")}]
    launches = [JobLaunch("r-0-0", instance_id, [], {}, mounts=good),
                JobLaunch("r-0-1", instance_id, [], {}, mounts=bad)]
    # The sim's batched call, or the interface's default that starts them one by one.
    start_jobs = driver.start_jobs if batched else functools.partial(Driver.start_jobs, driver)
    workload_id, error = start_jobs(jobs=launches)
    assert isinstance(error, FatalError) and "not attached" in str(error)
    assert SimJob.objects.get(workload_id=workload_id).mounts == good


def test_terminating_the_instance_fails_running_jobs_but_not_finished_ones(driver, clock):
    instance_id = running_instance(driver)
    finished, running = start(driver, instance_id, ["sleep 1"]), start(driver, instance_id, ["sleep 100"])
    clock.advance(2)
    driver.terminate_instance(instance_id=instance_id)
    assert driver.poll_job(workload_id=finished).status == "done"
    assert driver.poll_job(workload_id=running).status == "failed"


# --- faults ---------------------------------------------------------------------------------------


def test_no_capacity_fault_blocks_one_region(driver, backend):
    add_fault(backend, {"kind": "no_capacity", "region": "eu-west-1"})
    with pytest.raises(NoCapacityError):
        driver.create_instance(name="f-0", offer=offer(driver, zone="eu-west-1b"))
    assert driver.create_instance(name="f-0", offer=offer(driver, zone="us-east-1a"))


def test_no_capacity_fault_with_a_zone_blocks_only_that_zone(driver, backend):
    add_fault(backend, {"kind": "no_capacity", "region": "eu-west-1", "availability_zone": "eu-west-1a"})
    with pytest.raises(NoCapacityError, match="eu-west-1a"):
        driver.create_instance(name="f-0", offer=offer(driver, zone="eu-west-1a"))
    assert driver.create_instance(name="f-0", offer=offer(driver, zone="eu-west-1b"))
    assert driver.create_instance(name="f-1", offer=offer(driver, zone="us-east-1a"))
    assert volume_in(driver, zone="eu-west-1a")  # volume creates are not capacity-bound


def test_crash_job_fault_fails_that_job(driver, backend):
    instance_id = running_instance(driver)
    victim, bystander = start(driver, instance_id, ["sleep 100"], "r-0-0"), start(driver, instance_id, [], "r-0-1")
    add_fault(backend, {"kind": "crash_job", "job": "r-0-0", "exit_status": 137})
    state = driver.poll_job(workload_id=victim)
    assert (state.status, state.exit_status) == ("failed", 137)
    assert driver.poll_job(workload_id=bystander).status == "running"


def test_interrupt_instance_fault_interrupts_it_and_fails_its_jobs(driver, backend):
    instance_id, other_id = running_instance(driver, "f-0"), running_instance(driver, "f-1")
    workload_id = start(driver, instance_id, ["sleep 100"])
    add_fault(backend, {"kind": "interrupt_instance", "instance": "f-0"})
    assert driver.instance_state(instance_id=instance_id) == "interrupted"
    assert driver.instance_state(instance_id=other_id) == "running"
    state = driver.poll_job(workload_id=workload_id)
    assert state.status == "failed" and "interrupted" in state.message
    clear_faults(backend)
    assert driver.instance_state(instance_id=instance_id) == "interrupted"  # a reclaimed VM stays gone
    driver.terminate_instance(instance_id=instance_id)
    assert driver.instance_state(instance_id=instance_id) == "terminated"


def test_api_errors_fault_fails_calls_before_they_act(driver, backend):
    add_fault(backend, {"kind": "api_errors", "rate": 1})
    with pytest.raises(TransientError):
        driver.offers()
    with pytest.raises(TransientError):
        driver.create_volume(name="v", region="eu-west-1", availability_zone=None, size_gb=1)
    clear_faults(backend)
    assert driver.list_tagged_resources() == []


def test_api_errors_fault_rate_is_a_probability(driver, backend):
    add_fault(backend, {"kind": "api_errors", "rate": 0.3})
    driver.rng = random.Random(7)
    failures = 0
    for _ in range(200):
        try:
            driver.list_tagged_resources()
        except TransientError:
            failures += 1
    assert 30 < failures < 90


def test_faults_are_listed_and_cleared_per_kind(backend):
    add_fault(backend, {"kind": "no_capacity", "region": "eu-west-1"})
    add_fault(backend, {"kind": "api_errors", "rate": 0.5})
    assert [f.as_payload() for f in list_faults(backend)] == [
        {"kind": "no_capacity", "region": "eu-west-1"},
        {"kind": "api_errors", "rate": 0.5},
    ]
    assert clear_faults(backend, "api_errors") == 1
    assert clear_faults(backend) == 1
    assert list(list_faults(backend)) == []
    with pytest.raises(InvalidInput):
        clear_faults(backend, "meteor")


def test_faults_only_exist_on_sim_backends(project):
    aws = Backend.objects.create(project=project, name="aws", type="aws", config={})
    with pytest.raises(InvalidInput) as exc:
        add_fault(aws, {"kind": "no_capacity", "region": "eu-west-1"})
    assert exc.value.code == "not_a_sim_backend"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"kind": "meteor"}, "kind"),
        ({"region": "eu-west-1"}, "kind"),
        ({"kind": "no_capacity"}, "region"),
        ({"kind": "no_capacity", "region": "eu-west-1", "zone": "a"}, "zone"),
        ({"kind": "no_capacity", "region": ""}, "region"),
        ({"kind": "stuck_detach", "volume": "v", "forced_ok": "yes"}, "forced_ok"),
        ({"kind": "crash_job", "job": "j", "exit_status": "1"}, "exit_status"),
        ({"kind": "crash_job", "job": "j", "exit_status": 0}, "exit_status"),
        ({"kind": "interrupt_instance", "instance": 3}, "instance"),
        ({"kind": "api_errors", "rate": 0}, "rate"),
        ({"kind": "api_errors", "rate": 1.5}, "rate"),
        ({"kind": "api_errors", "rate": True}, "rate"),
        ({"kind": "slow_detach", "volume": "v"}, "polls"),
        ({"kind": "slow_detach", "volume": "v", "polls": 0}, "polls"),
        ({"kind": "slow_detach", "volume": "v", "polls": 1001}, "polls"),
        ({"kind": "slow_detach", "volume": "v", "polls": 2.5}, "polls"),
        ({"kind": "slow_detach", "volume": "v", "polls": "3"}, "polls"),
        ({"kind": "slow_detach", "volume": "v", "polls": True}, "polls"),
        ({"kind": "slow_detach", "polls": 3}, "volume"),
        ({"kind": "stuck_attach"}, "volume"),
        ({"kind": "stuck_attach", "volume": ""}, "volume"),
        ({"kind": "stuck_attach", "volume": "v", "forced_ok": True}, "forced_ok"),
        ({"kind": "no_capacity", "region": "eu-west-1", "availability_zone": 1}, "availability_zone"),
        ({"kind": "no_capacity", "region": "eu-west-1", "availability_zone": "us-east-1a"}, "availability_zone"),
        ({"kind": "fail_volume_create", "volume": ""}, "volume"),
        ({"kind": "fail_volume_create", "region": "eu-west-1"}, "region"),
    ],
)
def test_validate_fault_names_the_problem(payload, field):
    with pytest.raises(InvalidInput) as exc:
        validate_fault(payload)
    assert exc.value.extra["field"] == field
    assert field in exc.value.detail


def test_validate_fault_accepts_each_kind():
    for payload in [
        {"kind": "stuck_detach", "volume": "v", "forced_ok": False},
        {"kind": "no_capacity", "region": "eu-west-1"},
        {"kind": "crash_job", "job": "r-0-0", "exit_status": 1},
        {"kind": "interrupt_instance", "instance": "f-0"},
        {"kind": "api_errors", "rate": 1},
        {"kind": "slow_detach", "volume": "v", "polls": 1},
        {"kind": "slow_detach", "volume": "v", "polls": 1000},
        {"kind": "stuck_attach", "volume": "v"},
        {"kind": "no_capacity", "region": "eu-west-1", "availability_zone": "eu-west-1b"},
        {"kind": "fail_volume_create"},
        {"kind": "fail_volume_create", "volume": "v"},
    ]:
        assert validate_fault(payload) == payload
