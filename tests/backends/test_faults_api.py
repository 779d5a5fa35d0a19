"""The sim faults endpoint for the volume faults: accepted as given, refused with a 400 naming the key."""

import pytest

from backends.models import SimFault

pytestmark = pytest.mark.django_db

FAULTS = "/api/v1/projects/main/backends/sim/faults/"


@pytest.mark.parametrize("payload", [
    {"kind": "slow_detach", "volume": "data", "polls": 3},
    {"kind": "stuck_attach", "volume": "data"},
    {"kind": "no_capacity", "region": "eu-west-1", "availability_zone": "eu-west-1b"},
    {"kind": "fail_volume_create"},
    {"kind": "fail_volume_create", "volume": "data"},
    {"kind": "stuck_detach", "volume": "data", "forced_ok": False},
])
def test_volume_faults_are_added_listed_and_cleared(api, sim_backend, payload):
    response = api.post(FAULTS, payload, format="json")
    assert response.status_code == 201, response.content
    params = {key: value for key, value in payload.items() if key != "kind"}
    assert (response.json()["kind"], response.json()["params"]) == (payload["kind"], params)
    assert [(f["kind"], f["params"]) for f in api.get(FAULTS).json()] == [(payload["kind"], params)]
    assert api.delete(f"{FAULTS}?kind={payload['kind']}").status_code == 204
    assert not SimFault.objects.exists()


@pytest.mark.parametrize(("payload", "field"), [
    ({"kind": "slow_detach", "volume": "data", "polls": 0}, "polls"),
    ({"kind": "slow_detach", "volume": "data", "polls": 1001}, "polls"),
    ({"kind": "slow_detach", "volume": "data", "polls": "3"}, "polls"),
    ({"kind": "slow_detach", "volume": "data", "polls": 1.5}, "polls"),
    ({"kind": "slow_detach", "volume": "data"}, "polls"),
    ({"kind": "slow_detach", "polls": 3}, "volume"),
    ({"kind": "stuck_attach"}, "volume"),
    ({"kind": "stuck_attach", "volume": "data", "polls": 3}, "polls"),
    ({"kind": "no_capacity", "region": "eu-west-1", "availability_zone": "us-east-1a"}, "availability_zone"),
    ({"kind": "no_capacity", "region": "eu-west-1", "availability_zone": ""}, "availability_zone"),
    ({"kind": "fail_volume_create", "volume": 7}, "volume"),
    ({"kind": "fail_volume_create", "size": 10}, "size"),
])
def test_bad_volume_fault_params_are_a_400_naming_the_key(api, sim_backend, payload, field):
    response = api.post(FAULTS, payload, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert (body["code"], body["field"]) == ("invalid_fault", field)
    assert field in body["detail"]
    assert not SimFault.objects.exists()
