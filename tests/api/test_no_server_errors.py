"""Odd and hostile bodies never give a 500 (each is a clear 4xx), dry run or not, in any content type."""

import pytest

pytestmark = pytest.mark.django_db

BODIES = [
    b"\xff\xfe\x00",
    b"a: &a [*a]",
    b"{}",
    b"[]",
    b"null",
    b"123",
    b"type: fleet\nname: ff\nnodes: 1\nresources: {gpu: {count: -1}}",
    b"type: fleet\nname: ff\nnodes: 99999999999999999999",
    b"type: fleet\nname: ff\nnodes: '1..'",
    b"type: fleet\nname: ff\nnodes: 1\nmax_price: -1",
    b"type: fleet\nname: " + b"a" * 300 + b"\nnodes: 1",
    b"type: volume\nname: vv\nbackend: sim\nregion: eu-west-1\nsize: 10GB\navailability_zone: mars",
    b"type: service\nname: ss\ncommands: [x]\nport: 70000",
    b"type: task\nname: null\ncommands: [x]",
    b"type: task\ncommands: [x]\nenv: {A: [1,2]}",
    b"type: task\nname: tt\ncommands: [x]\nresources: {memory: 1e400GB}",
    b"type: task\nname: tt\ncommands: [x]\nvolumes: [{name: [], path: /d}]",
    b"type: task\nname: tt\ncommands: [x]\nretry: {on_events: []}",
    b"type: task\nname: tt\ncommands: [x]\nfleets: {a: 1}",
    b"type: task\nname: tt\ncommands: ['" + b"x" * 100000 + b"']",
    b"type: task\nname: tt\ncommands: [x]\nstop_duration: 1e9",
]

@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("ctype", ["application/yaml", "application/json", "text/plain"])
def test_odd_configurations_never_give_a_500(project, sim_backend, api, body, ctype):
    r = api.post("/api/v1/projects/main/apply/?dry_run=true", data=body, content_type=ctype)
    assert r.status_code < 500, (r.status_code, r.content[:300])
    r = api.post("/api/v1/projects/main/apply/", data=body, content_type=ctype)
    assert r.status_code < 500, (r.status_code, r.content[:300])

@pytest.mark.parametrize("path,body", [
    ("runs/", {"type": "task", "name": "tt", "commands": ["x"], "resources": {"gpu": {"name": 5}}}),
    ("fleets/", {"name": "ff", "nodes": 1, "blocks": "many"}),
    ("volumes/", {"name": "vv", "backend": 5, "region": "eu-west-1", "size": "10GB"}),
    ("backends/", {"name": "bb", "type": "sim", "config": {"instance_types": [{"name": 1}]}}),
    ("backends/sim/faults/", {"kind": "crash_job", "job": "x", "exit_status": "a"}),
    ("runs/nope/stop/", {"abort": True}),
])
def test_odd_json_bodies_never_give_a_500(project, sim_backend, api, path, body):
    r = api.post(f"/api/v1/projects/main/{path}", body, format="json")
    assert r.status_code < 500, (r.status_code, r.content[:300])
