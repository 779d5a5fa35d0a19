"""No background pass loops or allocates in proportion to a number a user wrote: blocks are computed."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleets.models import Fleet, Instance
from fleets.resources import blocks_needed, total_blocks_for
from fleets.specs import MAX_BLOCKS, parse_fleet_spec
from runs.models import Run
from tests import factories

GPU8 = {"cpus": 192, "memory_mib": 2048 * 1024, "gpus": [{"name": "H100", "memory_mib": 80 * 1024}] * 8,
        "disk_gb": 30720}
CPU16 = {"cpus": 16, "memory_mib": 64 * 1024, "gpus": [], "disk_gb": 200}


def _requirements(gpus=None, cpu=1, memory=1.0, disk=None) -> dict:
    return {"cpu": {"min": cpu, "max": None}, "memory": {"min": memory, "max": None},
            "gpu": {"count": gpus or {"min": 0, "max": None}, "name": None, "memory": None, "vendor": None},
            "disk": {"min": disk, "max": None}}


@pytest.mark.parametrize(("resources", "total", "requirements", "expected"), [
    (GPU8, 10**14, _requirements({"min": 1, "max": 1}), 12_500_000_000_000),  # one GPU is 1/8 of the blocks
    (GPU8, 10**23 + 1, _requirements({"min": 1, "max": 1}), None),  # an odd count: only the whole machine
    (GPU8, 10**23, _requirements({"min": 8, "max": 8}), 10**23),
    (CPU16, 99999999999999999999999, _requirements(cpu=4), 25_000_000_000_000_000_000_000),
    (CPU16, 10**30, _requirements(memory=1e300), None),  # an absurd stored minimum: no float overflow
])
def test_blocks_needed_answers_at_once_for_any_block_count(resources, total, requirements, expected):
    started = time.monotonic()
    blocks, why = blocks_needed(resources, total, requirements)
    assert time.monotonic() - started < 0.1
    assert blocks == expected
    assert bool(why) == (expected is None)


def _smallest_share_by_trying_each(resources: dict, total: int, req: dict) -> int | None:
    """The definition: the fewest blocks whose share has whole GPUs in range and enough CPU and memory."""
    gpus, count = len(resources["gpus"]), req["gpu"]["count"]
    for blocks in range(1, total + 1):
        if gpus * blocks % total:
            continue
        share = gpus * blocks // total
        if (count["min"] is not None and share < count["min"]) or (count["max"] is not None and share > count["max"]):
            continue
        if (resources["cpus"] * blocks / total >= req["cpu"]["min"] - 1e-9
                and resources["memory_mib"] / 1024 * blocks / total >= req["memory"]["min"] - 1e-9):
            return blocks
    return None


@settings(max_examples=300, deadline=None)
@given(
    gpus=st.sampled_from([0, 1, 2, 3, 4, 6, 8, 16]),
    cpus=st.sampled_from([1, 3, 8, 12, 96]),
    memory_gb=st.sampled_from([3, 16, 170, 1152]),
    total=st.integers(1, 130),
    low=st.one_of(st.none(), st.integers(0, 9)),
    width=st.one_of(st.none(), st.integers(0, 8)),
    cpu=st.sampled_from([1, 2, 5, 16, 200]),
    memory=st.sampled_from([0.5, 1.0, 8.0, 100.0, 999.0]),
)
def test_blocks_needed_agrees_with_trying_every_share(gpus, cpus, memory_gb, total, low, width, cpu, memory):
    resources = {"cpus": cpus, "memory_mib": memory_gb * 1024, "gpus": [{"name": "A100", "memory_mib": 81920}] * gpus,
                 "disk_gb": 100}
    count = {"min": low, "max": None if width is None else (low or 0) + width}
    req = _requirements(count, cpu=cpu, memory=memory)
    assert blocks_needed(resources, total, req)[0] == _smallest_share_by_trying_each(resources, total, req)


def test_blocks_beyond_the_limit_in_a_stored_spec_are_capped():
    assert total_blocks_for(CPU16, 10**23) == total_blocks_for(CPU16, 100000000000000) == MAX_BLOCKS
    assert total_blocks_for(CPU16, 8) == 8 and total_blocks_for(CPU16, "auto") == 16


@pytest.mark.django_db
@pytest.mark.parametrize("blocks", [100000000000000, 99999999999999999999999])
def test_a_fleet_stored_before_the_limit_is_provisioned_and_used(project, sim_backend, api, apply, reconcile, blocks):
    spec = parse_fleet_spec({"type": "fleet", "name": "old", "nodes": 1, "resources": {"cpu": 16, "gpu": 0}})
    factories.FleetFactory(project=project, name="old", spec={**spec, "blocks": blocks}, status="submitted")
    started = time.monotonic()
    reconcile()
    apply("type: task\nname: small\ncommands: [x]\nresources: {cpu: 4, memory: 1GB}\nfleets: [old]\n")
    reconcile()
    assert time.monotonic() - started < 30
    instance = Instance.objects.get(fleet__name="old")
    assert instance.total_blocks == MAX_BLOCKS
    job = Run.objects.get(name="small").jobs.get()
    assert (job.instance_id, job.blocks) == (instance.pk, MAX_BLOCKS // 4)
    assert Fleet.objects.get(name="old").status == "active"


@pytest.mark.django_db
@pytest.mark.parametrize("blocks", ["100000000000000", "99999999999999999999999"])
def test_a_huge_block_count_is_refused_at_apply(project, sim_backend, api, blocks):
    for query in ("?dry_run=true", ""):
        response = api.post("/api/v1/projects/main/apply/" + query, data=f"type: fleet\nname: ff\nnodes: 1\n"
                            f"blocks: {blocks}\n", content_type="application/yaml")
        assert (response.status_code, response.json()["field"]) == (400, "blocks")
    assert not Fleet.objects.exists()
