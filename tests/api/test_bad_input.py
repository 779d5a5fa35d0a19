"""Bad input gets a 400 naming the problem, never a 500, and changes nothing."""

import pytest
from django.core.management import call_command

from core.models import Event
from tests import factories

pytestmark = pytest.mark.django_db

APPLY = "/api/v1/projects/main/apply/"

BAD_APPLY = [
    ("", "empty"),
    ("   \n", "empty"),
    ("type: fleet\nname: [unclosed", "line"),
    ("- a\n- b\n", "mapping"),
    ("just a string", "mapping"),
    ("type: fleet\n", "name"),
    ("name: xx\nnodes: 1\n", "type"),
    ("type: dev-environment\nname: dev\nide: emacs\n", "ide"),
    ("type: gateway\nname: gw\n", "gateway"),
    ("type: fleet\nname: ff\nnodes: 1\nblocks: 0\n", "blocks"),
    ("type: fleet\nname: ff\nnodes: -1\n", "nodes"),
    ("type: fleet\nname: Bad_Name\nnodes: 1\n", "name"),
    ("type: fleet\nname: ff\nnodes: 1\nfoo: bar\n", "foo"),
    ("type: fleet\nname: ff\nnodes: 1\nssh_config: {}\n", "ssh_config"),
    ("type: fleet\nname: ff\nnodes: 1\nbackends: [nowhere]\n", "nowhere"),
    ("type: service\nname: ss\ncommands: [x]\nport: 80\nreplicas: -2\n", "replicas"),
    ("type: task\nname: tt\ncommands: [x]\nretry: {duration: forever}\n", "duration"),
    ("type: task\nname: tt\ncommands: 5\n", "commands"),
    ("type: task\nname: tt\ncommands: [x]\nresources: {gpu: 'A100:abc:zz'}\n", "gpu"),
    ("type: task\nname: tt\ncommands: [x]\nfleets: [missing]\n", "missing"),
    ("type: task\nname: tt\ncommands: [x]\nvolumes: ['nope:/data']\n", "nope"),
    ("type: volume\nname: vv\nbackend: sim\nregion: mars-1\nsize: 10GB\n", "region"),
    ("type: volume\nname: vv\nbackend: sim\nregion: eu-west-1\n", "size"),
]


def _snapshot(project):
    return (Event.objects.count(), project.fleets.count(), project.volumes.count(), project.runs.count(),
            list(project.backends.values_list("name", "config", "credentials_encrypted")))


@pytest.mark.parametrize("body,word", BAD_APPLY)
def test_bad_configuration_is_400_naming_the_problem(project, sim_backend, api, body, word):
    before = _snapshot(project)
    for dry_run in ("", "?dry_run=true"):
        response = api.post(APPLY + dry_run, data=body, content_type="application/yaml")
        assert response.status_code == 400, response.content
        data = response.json()
        assert data["code"] in ("invalid_configuration", "invalid")
        assert word.lower() in data["detail"].lower(), data
    assert _snapshot(project) == before


def test_bad_json_body_is_400(project, sim_backend, api):
    response = api.post(APPLY, data='{"type": "fleet", ', content_type="application/json")
    assert response.status_code == 400
    assert "json" in response.json()["detail"].lower()


BAD_REQUESTS = [
    ("post", "/api/v1/projects/main/backends/", {"name": "xx", "type": "gce"}, "type"),
    ("post", "/api/v1/projects/main/backends/", {"name": "xx", "type": "aws"}, "regions"),
    ("post", "/api/v1/projects/main/backends/", {"type": "sim"}, "name"),
    ("post", "/api/v1/projects/main/backends/", {"name": "Bad Name", "type": "sim"}, "name"),
    ("post", "/api/v1/projects/main/backends/", {"name": "xx", "type": "sim", "config": {"latency": -1}}, "latency"),
    ("post", "/api/v1/projects/main/backends/", {"name": "xx", "type": "sim", "config": [1]}, "config"),
    ("post", "/api/v1/projects/main/backends/", {"name": "xx", "type": "sim", "credentials": "s3cret"}, "credentials"),
    ("patch", "/api/v1/projects/main/backends/sim/", {"config": {"regions": "eu"}}, "regions"),
    ("patch", "/api/v1/projects/main/backends/sim/", {"type": "aws"}, "type"),
    ("post", "/api/v1/projects/main/backends/sim/faults/", {"kind": "meteor"}, "kind"),
    ("post", "/api/v1/projects/main/backends/sim/faults/", {"kind": "api_errors", "rate": 2}, "rate"),
    ("post", "/api/v1/projects/main/backends/sim/faults/", {"kind": "no_capacity"}, "region"),
    ("post", "/api/v1/projects/main/backends/sim/faults/", [1, 2], "kind"),
    ("post", "/api/v1/projects/main/fleets/", {"name": "ff", "nodes": "many"}, "nodes"),
    ("post", "/api/v1/projects/main/fleets/", {"type": "volume", "name": "ff"}, "type"),
    ("post", "/api/v1/projects/main/fleets/", [], "mapping"),
    ("post", "/api/v1/projects/main/volumes/", {"name": "vv", "backend": "sim", "size": "10GB"}, "region"),
    ("post", "/api/v1/projects/main/runs/", {"type": "fleet", "name": "rr"}, "type"),
    ("post", "/api/v1/projects/main/runs/", {"type": "task", "name": "rr"}, "commands"),
    ("post", "/api/v1/projects/main/runs/r1/stop/", {"abort": "maybe"}, "abort"),
    ("post", "/api/v1/projects/main/runs/r1/stop/", {"force": True}, "force"),
    ("post", "/api/v1/projects/", {"name": ""}, "name"),
]


@pytest.mark.parametrize("method,path,body,word", BAD_REQUESTS)
def test_bad_request_is_400_naming_the_problem(project, sim_backend, api, method, path, body, word):
    factories.RunFactory(project=project, name="r1")
    before = _snapshot(project) + (list(sim_backend.sim_faults.values_list("kind")),)
    response = getattr(api, method)(path, body, format="json")
    assert response.status_code == 400, response.content
    data = response.json()
    assert {"code", "detail"} <= set(data)
    assert word.lower() in str(data).lower(), data
    assert _snapshot(project) + (list(sim_backend.sim_faults.values_list("kind")),) == before


def test_faults_are_refused_for_non_sim_backends(project, api):
    factories.BackendFactory(project=project, name="cloud", type="aws")
    for method in ("get", "post", "delete"):
        response = getattr(api, method)("/api/v1/projects/main/backends/cloud/faults/",
                                        {"kind": "no_capacity", "region": "x"}, format="json")
        assert response.status_code == 400
        assert response.json()["code"] == "not_a_sim_backend"


def test_openapi_schema_is_valid(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    assert "/api/v1/projects/{project}/runs/{name}/stop/" in (tmp_path / "schema.yml").read_text()


def test_docs_page_loads(api):
    assert api.get("/api/docs/").status_code == 200
    assert api.get("/api/schema/").status_code == 200
