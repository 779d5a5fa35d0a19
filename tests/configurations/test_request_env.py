"""dstack's valueless env entries (``- HF_TOKEN``) take their value from the apply request's env map,
as the CLI sends the user's shell values; a missing one is a 400 naming it, with nothing written."""

import json

import pytest

from runs.models import Run

pytestmark = pytest.mark.django_db

APPLY = "/api/v1/projects/main/apply/"
TASK = "type: task\nname: t1\ncommands: [train]\nenv:\n  - HF_TOKEN\n  - MODE=fast\n  - WANDB_KEY\n"


def test_valueless_env_entries_are_filled_from_the_request(api):
    body = {"configuration": TASK, "env": {"HF_TOKEN": "hf-123", "WANDB_KEY": "w-9", "UNUSED": "x"}}
    response = api.post(APPLY, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.content
    assert Run.objects.get(name="t1").spec["env"] == {"HF_TOKEN": "hf-123", "MODE": "fast", "WANDB_KEY": "w-9"}


def test_the_configuration_may_be_a_mapping_too(api):
    doc = {"type": "task", "name": "t1", "commands": ["x"], "env": {"HF_TOKEN": None}}
    response = api.post(APPLY, data=json.dumps({"configuration": doc, "env": {"HF_TOKEN": "v"}}),
                        content_type="application/json")
    assert response.status_code == 202, response.content
    assert Run.objects.get(name="t1").spec["env"] == {"HF_TOKEN": "v"}


def test_a_missing_value_is_a_400_naming_it_and_writes_nothing(api):
    body = {"configuration": TASK, "env": {"HF_TOKEN": "hf-123"}}
    response = api.post(APPLY, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert response.json()["field"] == "env" and "WANDB_KEY" in response.json()["detail"]
    yaml = api.post(APPLY, data=TASK, content_type="application/yaml")
    assert yaml.status_code == 400 and "HF_TOKEN" in yaml.json()["detail"]
    assert not Run.objects.exists()


@pytest.mark.parametrize(("body", "field"), [
    ({"configuration": TASK, "env": {"HF_TOKEN": 5}}, "env.HF_TOKEN"),
    ({"configuration": TASK, "env": ["HF_TOKEN=x"]}, "env"),
    ({"configuration": TASK, "env": {}, "extra": 1}, "extra"),
])
def test_a_bad_request_env_is_a_400_naming_it(api, body, field):
    response = api.post(APPLY, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["field"] == field
    assert not Run.objects.exists()
