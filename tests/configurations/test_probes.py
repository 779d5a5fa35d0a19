"""A service's ``probes`` (dstack's HTTP readiness probes): defaults, normalization, errors naming the field."""

import pytest
import yaml

from core.specs import SpecError
from runs.configuration import parse_run_spec
from runs.models import Run

SERVICE = "type: service\nname: llm\ncommands: [serve]\nport: 8000\n"
TASK = "type: task\nname: train\ncommands: [train]\n"
APPLY = "/api/v1/projects/main/apply/"
DEFAULTS = {"type": "http", "url": "/", "method": "get", "headers": [], "body": None, "timeout": 10,
            "interval": 15, "ready_after": 1}


def _probes(text: str) -> list[dict]:
    return parse_run_spec(yaml.safe_load(SERVICE + text))["probes"]


def _refused(text: str, base: str = SERVICE) -> SpecError:
    with pytest.raises(SpecError) as err:
        parse_run_spec(yaml.safe_load(base + text))
    return err.value


def test_a_probe_gets_every_default():
    assert _probes("probes: [{type: http}]") == [DEFAULTS]


def test_no_probes_is_an_empty_list_for_services_and_tasks():
    assert _probes("") == []
    assert _probes("probes: null") == []
    assert parse_run_spec(yaml.safe_load(TASK))["probes"] == []


def test_probes_are_normalized():
    text = """probes:
  - type: http
    url: /health
    method: POST
    headers: [{name: Authorization, value: Bearer x}, {name: X-Empty, value: ''}]
    body: '{"ping": true}'
    timeout: 1m
    interval: 30
    ready_after: 3
  - {type: http, url: /ready, timeout: 2s, interval: 1h30m}
"""
    assert _probes(text) == [
        {"type": "http", "url": "/health", "method": "post",
         "headers": [{"name": "Authorization", "value": "Bearer x"}, {"name": "X-Empty", "value": ""}],
         "body": '{"ping": true}', "timeout": 60, "interval": 30, "ready_after": 3},
        {**DEFAULTS, "url": "/ready", "timeout": 2, "interval": 5400},
    ]


@pytest.mark.parametrize(("text", "field", "words"), [
    ("probes: {type: http}", "probes", "list of probes"),
    ("probes: [http]", "probes[0]", "mapping"),
    ("probes: [{url: /health}]", "probes[0].type", "required"),
    ("probes: [{type: tcp}]", "probes[0].type", "http"),
    ("probes: [{type: http, port: 80}]", "probes[0].port", "unknown field"),
    ("probes: [{type: http, until_ready: true}]", "probes[0].until_ready", "unknown field"),
    ("probes: [{type: http, url: health}]", "probes[0].url", "starting with '/'"),
    ("probes: [{type: http, url: ''}]", "probes[0].url", "non-empty"),
    ("probes: [{type: http, method: fetch}]", "probes[0].method", "get"),
    ("probes: [{type: http, ready_after: 0}]", "probes[0].ready_after", "at least 1"),
    ("probes: [{type: http, ready_after: '2'}]", "probes[0].ready_after", "integer"),
    ("probes: [{type: http, ready_after: true}]", "probes[0].ready_after", "integer"),
    ("probes: [{type: http, ready_after: 1001}]", "probes[0].ready_after", "at most 1000"),
    ("probes: [{type: http, timeout: 0}]", "probes[0].timeout", "at least 1s"),
    ("probes: [{type: http, timeout: soon}]", "probes[0].timeout", "invalid duration"),
    ("probes: [{type: http}, {type: http, interval: off}]", "probes[1].interval", "duration"),
    ("probes: [{type: http, interval: -5}]", "probes[0].interval", "negative"),
    ("probes: [{type: http, body: {a: 1}}]", "probes[0].body", "string"),
    ("probes: [{type: http, headers: {Authorization: x}}]", "probes[0].headers", "list"),
    ("probes: [{type: http, headers: [{name: X-A}]}]", "probes[0].headers[0].value", "required"),
    ("probes: [{type: http, headers: [{name: 'bad name', value: x}]}]", "probes[0].headers[0].name", "header"),
    ("probes: [{type: http, headers: [{name: X-A, value: 1}]}]", "probes[0].headers[0].value", "string"),
    ("probes: [{type: http, headers: [{name: X-A, value: \"a\\nb\"}]}]", "probes[0].headers[0].value", "one line"),
    ("probes: [{type: http, headers: [{name: X-A, value: x, extra: 1}]}]", "probes[0].headers[0].extra",
     "unknown field"),
    ("probes: [" + ", ".join(["{type: http}"] * 11) + "]", "probes", "at most 10"),
])
def test_a_bad_probe_names_the_field(text, field, words):
    err = _refused(text)
    assert err.field == field and words in err.message, (err.field, err.message)


def test_ten_probes_are_allowed():
    assert len(_probes("probes: [" + ", ".join(["{type: http}"] * 10) + "]")) == 10


def test_probes_on_a_task_are_refused():
    err = _refused("probes: [{type: http}]", base=TASK)
    assert err.field == "probes" and "services only" in err.message


@pytest.mark.django_db
def test_apply_stores_the_normalized_probes(project, sim_backend, api):
    text = SERVICE + "probes: [{type: http, url: /health, ready_after: 2}]\n"
    response = api.post(APPLY, data=text, content_type="application/yaml")
    assert response.status_code == 202, response.content
    assert Run.objects.get(name="llm").spec["probes"] == [{**DEFAULTS, "url": "/health", "ready_after": 2}]


@pytest.mark.django_db
@pytest.mark.parametrize(("text", "field"), [
    (SERVICE + "probes: [{type: http, ready_after: 0}]\n", "probes[0].ready_after"),
    (TASK + "probes: [{type: http}]\n", "probes"),
])
def test_apply_answers_400_naming_the_field_and_writes_nothing(project, sim_backend, api, text, field):
    response = api.post(APPLY, data=text, content_type="application/yaml")
    assert response.status_code == 400, response.content
    assert (response.json()["code"], response.json()["field"]) == ("invalid_configuration", field)
    assert not Run.objects.exists()
