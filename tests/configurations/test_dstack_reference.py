"""dstack-style files written from dstack's configuration reference, field by field: every field of a task,
a service, a dev environment, a fleet and a volume is accepted through the API; the workload's fields are
stored, reach the driver with the launch and are shown by the API (a registry password never is); what
Stackyard cannot do is a 400 naming it; the OpenAPI document carries the models' schema."""

import pytest
import yaml

from backends.sim_models import SimJob
from runs.models import Run

pytestmark = pytest.mark.django_db

APPLY = "/api/v1/projects/main/apply/"

# Every field of dstack's BaseRunConfiguration and ProfileParams, with a task's own.
TASK = """
type: task
name: every-field
image: dstackai/base:py3.11
user: trainer
privileged: true
entrypoint: /bin/bash -c
working_dir: /workflow
home_dir: /home/trainer
registry_auth:
  username: robot
  password: s3cret-registry-pass
python: 3.11
nvcc: true
single_branch: false
env:
  - MODE=fast
  - HF_TOKEN
shell: bash
resources:
  cpu: 2..
  memory: 8GB..
  shm_size: 1GB
  disk: 50GB..
priority: 50
volumes:
  - /mnt/cache:/root/.cache
docker: false
repos:
  - https://github.com/dstackai/dstack:/workflow/dstack
  - {url: "https://github.com/org/repo", branch: main, path: repo, if_exists: skip}
files:
  - config.yaml
  - local/data:/data
dstack: false
setup:
  - pip install -r requirements.txt
commands:
  - python train.py
ports:
  - 6006
  - "8080:80"
nodes: 1
backends: [sim]
regions: [eu-west-1, us-east-1]
availability_zones: [eu-west-1a, eu-west-1b, us-east-1a, us-east-1b]
instance_types: [cpu-4, cpu-16]
spot_policy: auto
retry:
  on_events: [no-capacity, error]
  duration: 1h
max_duration: 2h
stop_duration: 5m
max_price: 10
creation_policy: reuse-or-create
idle_duration: 10m
utilization_policy:
  min_gpu_utilization: 10
  time_window: 30m
startup_order: master-first
stop_criteria: master-done
tags:
  team: ml
backend_options: []
"""

SERVICE = """
type: service
name: every-service-field
image: vllm/vllm-openai:latest
env: [MODEL_ID=meta-llama/Llama-3.1-8B-Instruct]
commands:
  - vllm serve $MODEL_ID --port 8000
port: 8000
gateway: false
strip_prefix: true
model:
  type: chat
  name: meta-llama/Llama-3.1-8B-Instruct
  format: openai
  prefix: /v1
https: auto
auth: false
rate_limits:
  - prefix: /v1
    key: {type: header, header: X-API-Key}
    rps: 5.5
    burst: 10
  - rps: 20
probes:
  - type: http
    url: /health
    ready_after: 1
replicas: 2
resources:
  gpu: 0
"""

DEV_ENVIRONMENT = """
type: dev-environment
name: every-dev-field
ide: vscode
version: 1.90.0
init:
  - pip install -r requirements.txt
inactivity_duration: 2h
python: "3.12"
ports: ["*:8888"]
"""

FLEET = """
type: fleet
name: every-fleet-field
nodes: {min: 1, target: 1, max: 2}
placement: any
resources:
  cpu: 2..
blocks: 1
backends: [sim]
regions: [eu-west-1]
availability_zones: [eu-west-1a]
instance_types: [cpu-small]
reservation: my-reservation
spot_policy: on-demand
retry:
  on_events: [no-capacity]
  duration: 10m
max_price: 5
idle_duration: 1h
tags: {team: ml}
backend_options: []
env: [HTTP_PROXY=http://proxy:80]
"""

VOLUME = """
type: volume
name: every-volume-field
backend: sim
region: eu-west-1
availability_zone: eu-west-1a
size: 100GB
auto_cleanup_duration: 1h
tags: {team: ml}
"""


POOL = "type: fleet\nname: pool\nnodes: 0..4\n"


def post_yaml(api, text: str, **params):
    query = "?dry_run=true" if params.get("dry_run") else ""
    return api.post(APPLY + query, data=text, content_type="application/yaml")


def test_a_task_with_every_field_is_stored_and_its_workload_reaches_the_driver(api, sim_backend, reconcile):
    import json

    post_yaml(api, POOL)
    body = {"configuration": TASK, "env": {"HF_TOKEN": "from-the-shell"}}
    response = api.post(APPLY, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.content
    assert "s3cret-registry-pass" not in response.content.decode()

    spec = Run.objects.get(name="every-field").spec
    workload = spec["workload"]
    assert workload["python"] == "3.11" and workload["privileged"] is True and workload["shell"] == "bash"
    assert workload["ports"] == [{"local_port": 6006, "container_port": 6006},
                                 {"local_port": 8080, "container_port": 80}]
    assert workload["repos"][0] == {"local_path": None, "url": "https://github.com/dstackai/dstack",
                                    "branch": None, "hash": None, "path": "/workflow/dstack", "if_exists": "error"}
    assert workload["files"] == [{"local_path": "config.yaml", "path": "config.yaml"},
                                 {"local_path": "local/data", "path": "/data"}]
    assert workload["registry_auth"] == {"username": "robot", "password": "s3cret-registry-pass"}
    assert (spec["priority"], spec["tags"], spec["creation_policy"]) == (50, {"team": "ml"}, "reuse-or-create")
    assert (spec["startup_order"], spec["stop_criteria"], spec["idle_duration"]) == ("master-first", "master-done", 600)
    assert spec["utilization_policy"] == {"min_gpu_utilization": 10, "time_window": 1800}
    assert spec["env"] == {"MODE": "fast", "HF_TOKEN": "from-the-shell"}

    shown = api.get("/api/v1/projects/main/runs/every-field/").json()
    assert shown["spec"]["workload"]["registry_auth"] == {"username": "robot", "password": "********"}
    assert shown["spec"]["workload"]["entrypoint"] == "/bin/bash -c"

    reconcile()
    job = SimJob.objects.get(job_name__startswith="every-field")
    assert job.image == "dstackai/base:py3.11"
    assert job.workload["python"] == "3.11" and job.workload["home_dir"] == "/home/trainer"
    assert job.workload["registry_auth"]["password"] == "s3cret-registry-pass"  # the driver needs it to pull


def test_a_service_with_every_field_runs_its_replicas(api, sim_backend, reconcile):
    post_yaml(api, POOL)
    response = post_yaml(api, SERVICE)
    assert response.status_code == 202, response.content
    spec = Run.objects.get(name="every-service-field").spec
    assert spec["workload"]["model"] == {"type": "chat", "name": "meta-llama/Llama-3.1-8B-Instruct",
                                         "format": "openai", "prefix": "/v1", "chat_template": None,
                                         "eos_token": None}
    assert spec["workload"]["rate_limits"][0]["key"] == {"type": "header", "header": "X-API-Key"}
    assert spec["workload"]["https"] == "auto" and spec["workload"]["auth"] is False
    reconcile()
    assert Run.objects.get(name="every-service-field").status == "running"
    assert SimJob.objects.filter(job_name__startswith="every-service-field").count() == 2


def test_a_dev_environment_with_every_field_is_one_job(api, sim_backend, reconcile):
    response = post_yaml(api, DEV_ENVIRONMENT)
    assert response.status_code == 202, response.content
    run = Run.objects.get(name="every-dev-field")
    assert (run.type, run.spec["commands"], run.spec["inactivity_duration"]) == (
        "dev-environment", ["pip install -r requirements.txt"], 7200)
    assert run.spec["workload"]["ide"] == "vscode" and run.spec["workload"]["version"] == "1.90.0"
    assert run.spec["workload"]["ports"] == [{"local_port": None, "container_port": 8888}]


@pytest.mark.parametrize("text", [FLEET, VOLUME], ids=["fleet", "volume"])
def test_a_fleet_and_a_volume_with_every_field_are_accepted(api, sim_backend, text):
    response = post_yaml(api, text, dry_run=True)
    assert response.status_code == 200, response.content
    spec = response.json()["spec"]
    assert spec["tags"] == {"team": "ml"}


def test_fleet_fields_are_normalized(api, sim_backend):
    spec = post_yaml(api, FLEET, dry_run=True).json()["spec"]
    assert spec["nodes"] == {"min": 1, "target": 1, "max": 2}
    assert spec["retry"]["on_events"] == ["no-capacity"] and spec["retry"]["duration"] == 600
    assert (spec["placement"], spec["reservation"], spec["idle_duration"]) == ("any", "my-reservation", 3600)


@pytest.mark.parametrize(("text", "field", "words"), [
    ("type: gateway\nname: gw\ndomain: example.com\nbackend: aws\nregion: eu-west-1\n", "type", "gateway"),
    ("type: fleet\nname: ssh\nssh_config:\n  user: ubuntu\n  hosts: [10.0.0.1]\n", "ssh_config", "SSH fleets"),
    (TASK.replace("shell: bash", "shell: bash\nwat: 1"), "wat", "unknown field"),
    (SERVICE.replace("auth: false", "auth: maybe"), "auth", "boolean"),
    (SERVICE.replace("rps: 20", "rps: 0"), "rate_limits[1].rps", "greater than 0"),
    (DEV_ENVIRONMENT.replace("ide: vscode", "ide: vscode\ncommands: [x]"), "commands", "unknown field"),
    (TASK.replace("priority: 50", "priority: 101"), "priority", "100"),
    (TASK.replace("if_exists: skip", "if_exists: overwrite"), "repos[1].if_exists", "one of"),
])
def test_what_stackyard_cannot_do_or_does_not_know_is_a_400_naming_it(api, sim_backend, text, field, words):
    response = post_yaml(api, text)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["field"] == field and words in body["detail"], body
    assert not Run.objects.exists()


def test_reservation_is_kept_for_the_driver(api, sim_backend):
    text = TASK.replace("  - HF_TOKEN\n", "").replace("spot_policy: auto", "reservation: cr-123\nspot_policy: auto")
    spec = post_yaml(api, text, dry_run=True).json()["spec"]
    assert spec["reservation"] == "cr-123"


def test_the_openapi_document_carries_the_configuration_models(api):
    schema = yaml.safe_load(api.get("/api/schema/").content)
    body = schema["paths"]["/api/v1/projects/{project}/apply/"]["post"]["requestBody"]["content"]
    variants = body["application/yaml"]["schema"]["oneOf"]
    by_type = {variant["properties"]["type"]["enum"][0]: variant for variant in variants}
    assert set(by_type) == {"task", "service", "dev-environment", "fleet", "volume"}
    assert all(variant["additionalProperties"] is False for variant in variants)
    assert {"registry_auth", "python", "files", "repos", "schedule", "utilization_policy"} <= set(
        by_type["task"]["properties"])
    assert {"inactivity_duration", "ide"} <= set(by_type["dev-environment"]["properties"])
    assert "$ref" not in str(variants)


def test_an_updates_changes_never_show_a_registry_password(api, sim_backend):
    auth = "registry_auth: {username: robot, password: first-pass}"
    service = SERVICE.replace("gateway: false", f"gateway: false\n{auth}")
    assert post_yaml(api, service).status_code == 202
    response = post_yaml(api, service.replace("first-pass", "second-pass"), dry_run=True)
    assert response.status_code == 200, response.content
    assert response.json()["changes"]["workload"]["new"]["registry_auth"]["password"] == "********"
    assert "first-pass" not in response.content.decode() and "second-pass" not in response.content.decode()
