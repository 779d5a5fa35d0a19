"""Parsing and validation of dstack-compatible configuration files: pure Python, no database."""

import json
from pathlib import Path

import pytest

from configurations.loading import load_document, parse_configuration
from core.resource_specs import parse_resources
from core.specs import SpecError, parse_duration, parse_env, parse_range, parse_size

# The spec's examples, copied into the repository so the test never depends on a path outside it
# (an empty glob would make the parametrized test silently run nothing: see the check below).
EXAMPLES = sorted((Path(__file__).resolve().parent / "examples").glob("*.yml"))

FLEET = "type: fleet\nname: f1\nnodes: 1\n"
TASK = "type: task\nname: t1\ncommands: [run]\n"
SERVICE = "type: service\nname: s1\ncommands: [serve]\nport: 8000\n"


def apply(text: str, content_type: str | None = "application/yaml") -> tuple[str, dict]:
    return parse_configuration(load_document(text, content_type))


def dig(spec: dict, path: str):
    for key in path.split("."):
        spec = spec[int(key)] if isinstance(spec, list) else spec[key]
    return spec


ACCEPTED = [
    # (configuration, dotted path in the normalized spec, expected value)
    (FLEET + "resources: {gpu: 24GB..80GB}", "resources.gpu", {
        "count": {"min": 1, "max": 1}, "name": None, "memory": {"min": 24.0, "max": 80.0}, "vendor": None}),
    (FLEET + "resources: {gpu: 'A100:2'}", "resources.gpu", {
        "count": {"min": 2, "max": 2}, "name": ["A100"], "memory": None, "vendor": None}),
    (FLEET + "resources: {gpu: 'H100:8'}", "resources.gpu.count", {"min": 8, "max": 8}),
    (FLEET + "resources: {gpu: 'A100:40GB:2'}", "resources.gpu.memory", {"min": 40.0, "max": 40.0}),
    (FLEET + "resources: {gpu: 'A10G,A100:1'}", "resources.gpu.name", ["A10G", "A100"]),
    (FLEET + "resources: {gpu: 'amd:MI300X:8'}", "resources.gpu.vendor", "amd"),
    (FLEET + "resources: {gpu: 'nvidia:2'}", "resources.gpu.count", {"min": 2, "max": 2}),
    (FLEET + "resources: {gpu: 2..}", "resources.gpu.count", {"min": 2, "max": None}),
    (FLEET + "resources: {gpu: 1}", "resources.gpu.count", {"min": 1, "max": 1}),
    (FLEET + "resources: {gpu: {name: [A100], memory: 24GB.., count: 2, vendor: nvidia}}", "resources.gpu", {
        "count": {"min": 2, "max": 2}, "name": ["A100"], "memory": {"min": 24.0, "max": None}, "vendor": "nvidia"}),
    (FLEET + "resources: {cpu: 4..}", "resources.cpu", {"min": 4, "max": None}),
    (FLEET + "resources: {cpu: 'x86:4..8'}", "resources.cpu", {"min": 4, "max": 8, "arch": "x86"}),
    (FLEET + "resources: {memory: 16GB..}", "resources.memory", {"min": 16.0, "max": None}),
    (FLEET + "resources: {memory: 512MB..1TB}", "resources.memory", {"min": 0.5, "max": 1024.0}),
    (FLEET + "resources: {disk: 100GB}", "resources.disk", {"min": 100.0, "max": 100.0}),
    (FLEET + "resources: {disk: {size: 200GB..}}", "resources.disk", {"min": 200.0, "max": None}),
    (FLEET + "resources: {shm_size: 16 GB}", "resources.shm_size", 16.0),
    (FLEET, "resources", {
        "cpu": {"min": 2, "max": None}, "memory": {"min": 8, "max": None},
        "gpu": {"count": {"min": 0, "max": None}, "name": None, "memory": None, "vendor": None},
        "disk": {"min": 100, "max": None}, "shm_size": None}),
    ("type: fleet\nname: f1\nnodes: 0..2", "nodes", {"min": 0, "target": 0, "max": 2}),
    ("type: fleet\nname: f1\nnodes: 2", "nodes", {"min": 2, "target": 2, "max": 2}),
    ("type: fleet\nname: f1\nnodes: {min: 1, target: 2, max: 4}", "nodes", {"min": 1, "target": 2, "max": 4}),
    (FLEET + "blocks: auto", "blocks", "auto"),
    (FLEET, "blocks", 1),
    (FLEET, "idle_duration", 300),
    (FLEET + "idle_duration: off", "idle_duration", None),
    (FLEET + "idle_duration: 1h", "idle_duration", 3600),
    (FLEET + "spot_policy: auto\nmax_price: 2", "max_price", 2.0),
    (FLEET + "env: [A=1, B=x=y]", "env", {"A": "1", "B": "x=y"}),
    (SERVICE + "replicas: 2", "replicas", 2),
    (TASK + "python: 3.10", "workload.python", "3.10"),
    (TASK + "ports: [8080, '80:8000', '*:9000']", "workload.ports", [
        {"local_port": 8080, "container_port": 8080}, {"local_port": 80, "container_port": 8000},
        {"local_port": None, "container_port": 9000}]),
    (SERVICE + "model: meta-llama/Llama-3.1-8B", "workload.model.name", "meta-llama/Llama-3.1-8B"),
    ("type: task\nimage: ubuntu", "commands", []),
    ("type: dev-environment\nide: vscode\ninit: [pip install x]", "commands", ["pip install x"]),
    (SERVICE, "replicas", 1),
    (TASK, "replicas", 1),
    (TASK + "nodes: 3", "nodes", 3),
    (TASK + "volumes: ['data-eu:/data']", "volumes", [{"name": ["data-eu"], "path": "/data"}]),
    (TASK + "volumes: [{name: data-eu, path: /data/}]", "volumes", [{"name": ["data-eu"], "path": "/data"}]),
    (TASK + "volumes: [{name: [data-eu, data-us], path: /data}]", "volumes.0.name", ["data-eu", "data-us"]),
    (TASK + "retry: true", "retry", {"on_events": ["no-capacity", "interruption", "error"], "duration": 3600,
                                      "interval": 15, "max_attempts": None}),
    (TASK + "retry: {on_events: [error], max_duration: 30m}", "retry",
     {"on_events": ["error"], "duration": 1800, "interval": 15, "max_attempts": None}),
    (TASK + "retry: {max_attempts: 3}", "retry.max_attempts", 3),
    (TASK + "retry: false", "retry", None),
    (TASK + "stop_duration: 5m", "stop_duration", 300),
    (TASK + "max_stop_duration: 90s", "stop_duration", 90),
    (TASK + "stop_duration: 'off'", "stop_duration", None),
    (TASK, "stop_duration", None),
    (TASK + "max_duration: 1d", "max_duration", 86400),
    (TASK + "fleets: [gpu8]", "fleets", ["gpu8"]),
    (TASK + "env: {TOKEN: abc, PORT: 80}", "env", {"TOKEN": "abc", "PORT": "80"}),
    (TASK, "spot_policy", "on-demand"),
    ("type: task\ncommands: [x]", "name", None),
    (SERVICE.replace("8000", "'80:8000'"), "port", 8000),
    ("type: volume\nname: v1\nbackend: sim\nregion: eu-west-1\nsize: 1TB", "size_gb", 1024),
    ("type: volume\nname: v1\nbackend: aws\nregion: eu-west-1\nvolume_id: vol-123", "volume_id", "vol-123"),
]


@pytest.mark.parametrize(("text", "path", "expected"), ACCEPTED)
def test_accepted_configuration_is_normalized(text, path, expected):
    _, spec = apply(text)
    assert dig(spec, path) == expected
    json.dumps(spec)  # the normalized spec is stored as JSON


def test_the_shared_examples_are_there():
    assert len(EXAMPLES) >= 8, EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_shared_example_parses(path):
    kind, spec = apply(path.read_bytes())
    assert kind == spec["type"] == path.name.split("-")[0]


def test_json_body_is_accepted():
    body = json.dumps({"type": "volume", "name": "v1", "backend": "sim", "region": "r", "size": 10})
    assert apply(body, "application/json; charset=utf-8")[1]["size_gb"] == 10


REJECTED = [
    # (configuration, field named by the error, a word of its message)
    (FLEET + "blocks: 0", "blocks", "least"),
    (FLEET + "blocks: yes", "blocks", "auto"),
    ("type: fleet\nname: f1\nnodes: -1", "nodes", "least"),
    ("type: fleet\nname: f1\nnodes: yes", "nodes", "integer"),
    ("type: fleet\nname: f1", "nodes", "required"),
    ("type: fleet\nname: f1\nnodes: 8..2", "nodes", "greater"),
    (FLEET + "resources: {cpu: 8..2}", "resources.cpu", "greater"),
    (FLEET + "resources: {gpu: 'A100:abc:zz'}", "resources.gpu", "twice"),
    (FLEET + "resources: {gpu: 'A100:2:7'}", "resources.gpu", "twice"),
    (FLEET + "resources: {gpu: '24XB'}", "resources.gpu", "cannot"),
    (FLEET + "resources: {gpu: {name: A100, compute_capability: 8.0}}", "resources.gpu.compute_capability",
     "not supported"),
    (FLEET + "resources: {memory: 16XB}", "resources.memory", "size"),
    (FLEET + "resources: {memory: -4GB}", "resources.memory", "size"),
    (FLEET + "resources: {disk: -4}", "resources.disk", "negative"),
    (FLEET + "resources: {tpu: 1}", "resources.tpu", "unknown"),
    (FLEET + "idle_duration: forever", "idle_duration", "duration"),
    (FLEET + "spot_policy: cheap", "spot_policy", "one of"),
    (FLEET + "max_price: 0", "max_price", "positive"),
    (FLEET + "max_price: .nan", "max_price", "positive"),
    (FLEET + "resources: {disk: .inf}", "resources.disk", "size"),
    (FLEET + "ssh_config: {hosts: [1.2.3.4]}", "ssh_config", "not supported"),
    (FLEET + "colour: blue", "colour", "unknown"),
    ("type: fleet\nname: Bad_Name\nnodes: 1", "name", "invalid"),
    ("type: fleet\nname: 1abc\nnodes: 1", "name", "invalid"),
    (SERVICE + "replicas: -2", "replicas", "least"),
    (SERVICE + "replicas: 1..4", "replicas", "needs 'scaling'"),  # a range with scaling is accepted (runs its min)
    (SERVICE + "model: {name: llama, format: grpc}", "model.format", "one of"),
    ("type: service\ncommands: [x]", "port", "required"),
    (SERVICE.replace("8000", "70000"), "port", "most"),
    (TASK + "nodes: yes", "nodes", "boolean"),
    (TASK + "nodes: 0", "nodes", "least"),
    (TASK + "replicas: 2", "replicas", "unknown"),
    (TASK + "python: '2.7'", "python", "one of"),
    (TASK + "ports: ['80:x']", "ports[0]", "port mapping"),
    (TASK + "registry_auth: {username: u}", "registry_auth.password", "required"),
    (TASK + "privileged: 'yes'", "privileged", "boolean"),
    ("type: dev-environment\nide: emacs", "ide", "one of"),
    ("type: dev-environment\nentrypoint: /bin/sh", "entrypoint", "not supported"),
    (TASK + "groups: [{nodes: 2}]", "groups", "not supported"),
    ("type: task\ncommands: 5", "commands", "list"),
    ("type: task\ncommands: []", "commands", "either 'commands' or 'image'"),
    ("type: task\nname: t1", "commands", "either 'commands' or 'image'"),
    (TASK + "retry: {duration: forever}", "retry.duration", "duration"),
    (TASK + "retry: {max_duration: 'off'}", "retry.max_duration", "off"),
    (TASK + "retry: {on_events: [oom]}", "retry.on_events[0]", "one of"),
    (TASK + "retry: {on_events: []}", "retry.on_events", "least"),
    (TASK + "retry: {limit: 3}", "retry.limit", "unknown"),
    (TASK + "stop_duration: -5", "stop_duration", "negative"),
    (TASK + "stop_duration: 1m\nmax_stop_duration: 2m", "max_stop_duration", "only one"),
    (TASK + "nodes: 2\nvolumes: ['data:/data']", "volumes", "one instance"),
    (TASK + "volumes: ['data:relative']", "volumes[0]", "absolute"),
    (TASK + "volumes: ['a1:/data', {name: b1, path: /data/}]", "volumes[1].path", "twice"),
    (TASK + "volumes: [{name: [a1, Bad], path: /d}]", "volumes[0].name[1]", "invalid"),
    (TASK + "env: [NOVALUE]", "env", "no value for NOVALUE"),
    (TASK + "env: {DEBUG: yes}", "env.DEBUG", "quote"),
    ("type: volume\nname: v1\nbackend: sim\nregion: r", "size", "required"),
    ("type: volume\nname: v1\nregion: r\nsize: 10GB", "backend", "required"),
    ("type: volume\nname: v1\nbackend: sim\nregion: r\nsize: 0", "size", "positive"),
    ("type: volume\nname: v1\nbackend: sim\nregion: r\nsize: 10GB\ntags: {a: 1}", "tags.a", "string"),
    ("type: fleet\nname: f1\nnodes: {min: 2, target: 1}", "nodes.target", "between"),
    ("type: gateway\nname: gw", "type", "does not support"),
    ("type: cluster\nname: c1", "type", "expected one of"),
    ("name: no-type", "type", "required"),
    ("type: [task]", "type", "expected one of"),
]


@pytest.mark.parametrize(("text", "field", "word"), REJECTED)
def test_rejected_configuration_names_the_field(text, field, word):
    with pytest.raises(SpecError) as info:
        apply(text)
    assert info.value.field == field
    assert word.lower() in info.value.message.lower()
    assert str(info.value) == f"{field}: {info.value.message}"


BAD_DOCUMENTS = [
    ("", "application/yaml", "empty"),
    ("  \n# only a comment\n", "application/yaml", "empty"),
    ("type: fleet\nname: [unclosed\n", "application/yaml", "line"),
    ("type: fleet\n  name: x\n bad", None, "malformed"),
    ("{'type': }", "application/json", "malformed json"),
    ("- type: fleet\n- type: volume\n", "application/yaml", "mapping"),
    ("just a string", "application/yaml", "mapping"),
    ("type: fleet\n---\ntype: volume\n", "application/yaml", "one yaml document"),
    ("type: fleet\ntype: volume\n", "application/yaml", "duplicate"),
    (b"type: \xff\xfe", "application/yaml", "utf-8"),
]


@pytest.mark.parametrize(("body", "content_type", "word"), BAD_DOCUMENTS)
def test_unreadable_document_is_rejected(body, content_type, word):
    with pytest.raises(SpecError) as info:
        load_document(body, content_type)
    assert info.value.field == ""
    assert word.lower() in str(info.value).lower()


@pytest.mark.parametrize(
    ("value", "allow_off", "expected"),
    [(90, False, 90), ("30s", False, 30), ("5m", False, 300), ("1w", False, 604800), ("1h30m", False, 5400),
     ("off", True, None), (-1, True, None), (False, True, None)],
)
def test_parse_duration(value, allow_off, expected):
    assert parse_duration(value, "d", allow_off=allow_off) == expected


@pytest.mark.parametrize("value", [True, "forever", "-5m", "1.5h", "5 minutes", 2.5, "off", -1, None])
def test_parse_duration_rejects(value):
    with pytest.raises(SpecError):
        parse_duration(value, "d")


def test_parse_size_and_range():
    assert parse_size("16 GB", "m") == parse_size(16, "m") == 16.0
    assert parse_range("..8", "r", parse_size) == {"min": None, "max": 8.0}
    with pytest.raises(SpecError):
        parse_size(True, "m")
    with pytest.raises(SpecError, match="give a min"):
        parse_range("..", "r", parse_size)


def test_parse_resources_defaults_when_absent():
    assert parse_resources(None) == parse_resources({})
    assert parse_resources({})["gpu"]["count"] == {"min": 0, "max": None}


def test_parse_env_forms_agree():
    assert parse_env(["A=1", "B="], "env") == parse_env({"A": 1, "B": ""}, "env") == {"A": "1", "B": ""}
