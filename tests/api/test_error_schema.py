"""The OpenAPI schema is honest about errors: every operation documents its error responses, in the one
error shape, and the docs pages work offline."""

import re

import pytest
from django.contrib.staticfiles import finders
from drf_spectacular.generators import SchemaGenerator

ERROR_REF = {"$ref": "#/components/schemas/Error"}


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(request=None, public=True)


def _operations(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", method, operation


def test_the_error_shape_is_one_component(schema):
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "detail"}
    assert {"code", "detail", "field"} <= set(error["properties"])


def test_every_operation_documents_its_errors(schema):
    operations = list(_operations(schema))
    assert len(operations) > 20
    for label, method, operation in operations:
        expected = {"400", "401", "403", "404"}
        if method in ("post", "put", "patch", "delete"):
            expected.add("409")
        if method in ("post", "put", "patch"):
            expected |= {"413", "415"}
        for code in expected:
            response = operation["responses"].get(code)
            assert response, f"{label} does not document {code}"
            assert response["content"]["application/json"]["schema"] == ERROR_REF, (label, code)


def test_the_served_schema_lists_the_errors_too(api):
    body = api.get("/api/schema/?format=json").json()
    apply = body["paths"]["/api/v1/projects/{project}/apply/"]["post"]["responses"]
    assert {"400", "404", "409", "413"} <= set(apply)


@pytest.mark.django_db
def test_an_unknown_api_path_is_a_json_404(api):
    for method in ("get", "post", "delete"):
        response = getattr(api, method)("/api/v1/projects/main/nothing-here/")
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


@pytest.mark.django_db
def test_the_docs_page_loads_nothing_from_another_host(api):
    response = api.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    sources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert sources, "the docs page references no script or style: this test would check nothing"
    for source in sources:
        assert not re.match(r"^(https?:)?//", source), f"the docs page loads {source} from another host"
        assert "cdn" not in source.lower()
    static = [s for s in sources if s.startswith("/static/")]
    assert any(s.endswith("swagger-ui-bundle.js") for s in static), sources
    for source in static:
        assert finders.find(source.removeprefix("/static/")), f"{source} is not a static file of the project"
