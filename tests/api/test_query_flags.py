"""A boolean query flag takes true or false; anything else is a 400 naming it, and changes nothing."""

import pytest
from drf_spectacular.generators import SchemaGenerator

from core.models import Event

pytestmark = pytest.mark.django_db

APPLY = "/api/v1/projects/main/apply/"
FLEET = "type: fleet\nname: ff\nnodes: 1\n"


@pytest.mark.parametrize("value", ["banana", "", "on", "off", "2", "truee", "t", "nope"])
def test_an_unknown_dry_run_value_is_400_and_changes_nothing(project, sim_backend, api, value):
    events = Event.objects.count()
    response = api.post(f"{APPLY}?dry_run={value}", data=FLEET, content_type="application/yaml")
    assert response.status_code == 400, response.content
    assert response.json()["field"] == "dry_run" and "dry_run" in response.json()["detail"]
    assert (project.fleets.count(), Event.objects.count()) == (0, events)


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", "yes", "Yes"])
def test_true_values_make_a_dry_run(project, sim_backend, api, value):
    response = api.post(f"{APPLY}?dry_run={value}", data=FLEET, content_type="application/yaml")
    assert (response.status_code, response.json()["dry_run"]) == (200, True)
    assert not project.fleets.exists()


@pytest.mark.parametrize("value", ["false", "FALSE", "0", "no", None])
def test_false_values_and_no_flag_apply_for_real(project, sim_backend, api, value):
    query = "" if value is None else f"?dry_run={value}"
    response = api.post(APPLY + query, data=FLEET, content_type="application/yaml")
    assert (response.status_code, response.json()["dry_run"]) == (202, False)
    assert project.fleets.count() == 1


def _boolean_query_parameters():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for param in operation.get("parameters", []):
                if param["in"] == "query" and param["schema"].get("type") == "boolean":
                    yield path, method, param["name"]


def test_every_boolean_query_flag_is_strict(project, sim_backend, api):
    flags = list(_boolean_query_parameters())
    assert flags, "the schema lists no boolean query flag: this test would check nothing"
    for path, method, name in flags:
        url = path.replace("{project}", "main") + f"?{name}=banana"
        body = {} if method == "get" else {"data": FLEET, "content_type": "application/yaml"}
        response = getattr(api, method)(url, **body)
        assert response.status_code == 400, (path, method, name, response.content)
        assert response.json()["field"] == name
