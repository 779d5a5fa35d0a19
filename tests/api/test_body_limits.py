"""Bounded input: a body over the size limit is a 413, a body nested too deep a 400; never a 500."""

import json
import time

import pytest
from django.conf import settings

from core.models import Event
from core.specs import MAX_NESTING, check_json_nesting

pytestmark = pytest.mark.django_db

APPLY = "/api/v1/projects/main/apply/"
BACKENDS = "/api/v1/projects/main/backends/"


def _nested_json(levels: int) -> str:
    return '{"type": "fleet", "name": "ff", "nodes": 1, "env": ' + "[" * levels + "]" * levels + "}"


def _nested_yaml(levels: int, flow: bool) -> str:
    if flow:
        return "type: fleet\nname: ff\nnodes: 1\nenv: " + "[" * levels + "]" * levels + "\n"
    return "type: fleet\nname: ff\nnodes: 1\nenv:\n" + "".join("  " * i + "-\n" for i in range(levels))


@pytest.mark.parametrize("query", ["", "?dry_run=true"])
@pytest.mark.parametrize("ctype", ["application/yaml", "application/json"])
def test_a_body_over_the_limit_is_413_too_large(project, sim_backend, api, query, ctype):
    body = "type: fleet\nname: ff\nnodes: 1\n#" + "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    events = Event.objects.count()
    response = api.post(APPLY + query, data=body, content_type=ctype)
    assert response.status_code == 413
    assert response.json()["code"] == "too_large" and "limit" in response.json()["detail"]
    assert (Event.objects.count(), project.fleets.count()) == (events, 0)


def test_a_json_body_over_the_limit_is_413_on_every_endpoint(project, sim_backend, api):
    config = {"regions": ["eu-west-1"], "padding": "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE}
    response = api.post(BACKENDS, {"name": "big", "type": "sim", "config": config}, format="json")
    assert (response.status_code, response.json()["code"]) == (413, "too_large")
    response = api.patch(BACKENDS + "sim/", {"config": config}, format="json")
    assert (response.status_code, response.json()["code"]) == (413, "too_large")
    assert not project.backends.filter(name="big").exists()


@pytest.mark.parametrize("levels", [MAX_NESTING + 1, 1000, 100000])
@pytest.mark.parametrize("form", ["json", "yaml-flow", "yaml-block"])
def test_a_configuration_nested_too_deep_is_400(project, sim_backend, api, levels, form):
    if form == "json":
        body, ctype = _nested_json(levels), "application/json"
    else:
        flow = form == "yaml-flow"  # block style indents each level: 300 levels are already 90 KB
        body, ctype = _nested_yaml(levels if flow else min(levels, 300), flow), "application/yaml"
    for query in ("?dry_run=true", ""):
        response = api.post(APPLY + query, data=body, content_type=ctype)
        assert response.status_code == 400, response.content[:300]
        assert f"deeper than {MAX_NESTING}" in response.json()["detail"]
    assert not project.fleets.exists()


@pytest.mark.parametrize("form", ["json", "yaml-flow", "yaml-block"])
def test_nesting_up_to_the_limit_is_read(project, sim_backend, api, form):
    # The document is a level too: the env value may nest one level less than the limit.
    levels = MAX_NESTING - 1
    body = _nested_json(levels) if form == "json" else _nested_yaml(levels, form == "yaml-flow")
    ctype = "application/json" if form == "json" else "application/yaml"
    response = api.post(APPLY + "?dry_run=true", data=body, content_type=ctype)
    assert response.status_code == 400
    assert response.json()["field"].startswith("env")  # read fine; refused only as an env value


@pytest.mark.parametrize("levels", [MAX_NESTING + 1, 1000, 100000])
def test_a_json_body_nested_too_deep_is_400_on_every_endpoint(project, sim_backend, api, levels):
    config = "[" * levels + "]" * levels
    for method, path in (("post", BACKENDS), ("patch", BACKENDS + "sim/"), ("post", "/api/v1/projects/main/fleets/"),
                         ("post", "/api/v1/projects/")):
        body = '{"name": "deep", "type": "sim", "config": ' + config + "}"
        response = getattr(api, method)(path, data=body, content_type="application/json")
        assert response.status_code == 400, (path, response.content[:300])
        assert response.json()["code"] == "parse_error" and "nested" in response.json()["detail"]
    assert list(project.backends.values_list("name", "config")) == [("sim", {})]


@pytest.mark.parametrize(("body", "ctype"), [
    ("type: fleet\nname: ff\nnodes: " + "9" * 5000, "application/yaml"),
    (json.dumps({"type": "fleet", "name": "ff"})[:-1] + ', "nodes": ' + "9" * 5000 + "}", "application/json"),
])
def test_a_number_of_thousands_of_digits_is_400(project, sim_backend, api, body, ctype):
    response = api.post(APPLY, data=body, content_type=ctype)
    assert response.status_code == 400 and "malformed" in response.json()["detail"]
    response = api.post(BACKENDS, data='{"name": "n1", "type": "sim", "config": {"latency": ' + "9" * 5000 + "}}",
                        content_type="application/json")
    assert response.status_code == 400


def test_hostile_json_text_is_checked_in_linear_time():
    # A megabyte of escaped quotes once made a naive string-skipping regex take minutes.
    started = time.monotonic()
    for text in ('"' + '\\"' * 500000, '"' * 1000000, '{"a": "' + "x\\" * 300000):
        check_json_nesting(text)
    assert time.monotonic() - started < 2


def test_a_large_yaml_body_is_read_in_bounded_time(project, sim_backend, api):
    body = "type: task\nname: tt\ncommands: [" + "x," * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 2 - 100) + "]\n"
    started = time.monotonic()
    response = api.post(APPLY + "?dry_run=true", data=body, content_type="application/yaml")
    assert response.status_code == 200, response.content[:300]
    assert time.monotonic() - started < 10
