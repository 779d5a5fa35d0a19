"""Schemathesis over every operation of the served OpenAPI schema, against the in-process WSGI app.

Each operation gets a bounded number of generated requests (valid and invalid), sent with a project
admin's token; every answer must be documented (status code, content type, body schema) and none a 500.
"""

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests import factories

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 12  # per operation: the whole run stays well under a minute
# Names that exist, so that generated requests reach real objects and not only 404s.
NAMES = {"backends": ["sim", "spare"], "fleets": ["gpu8"], "instances": ["gpu8-0"], "volumes": ["data"],
         "runs": ["r1"]}


def _pin_path_parameters(schema: dict) -> dict:
    """Path parameters name existing objects (and one that does not exist); bodies and queries stay free."""
    for path, item in schema["paths"].items():
        collection = path.split("/")[5] if path.count("/") > 5 else ""
        for operation in item.values():
            for param in operation.get("parameters", []):
                if param["in"] == "path" and param["name"] == "project":
                    param["schema"] = {"type": "string", "enum": ["main", "nowhere"]}
                elif param["in"] == "path" and param["name"] == "name":
                    param["schema"] = {"type": "string", "enum": [*NAMES.get(collection, []), "missing"]}
    return schema


# Loaded once, when the tests are collected: fetching the schema touches no database.
schema = schemathesis.openapi.from_dict(_pin_path_parameters(
    schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application()).raw_schema))
schema.app = get_wsgi_application()


@pytest.fixture(autouse=True)
def objects(db, project, user, sim_backend):
    factories.BackendFactory(project=project, name="spare")
    fleet = factories.FleetFactory(project=project, name="gpu8")
    factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0, provider_instance_id="i-0",
                              resources={"cpus": 8, "memory_mib": 32768, "disk_gb": 100, "gpus": []})
    factories.VolumeFactory(project=project, backend=sim_backend, name="data")
    factories.RunFactory(project=project, name="r1")
    # The WSGI app runs in this thread, inside the test's transaction: Django must not close the
    # connection at the end of each request (its test client disconnects the same signal).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def token(user) -> str:
    from projects.tokens import create_token

    return create_token(user=user, name="schemathesis")[1]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented_and_never_500(case, token):
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS)
