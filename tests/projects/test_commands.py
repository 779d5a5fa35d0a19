"""Operator entry points: bootstrap, createuser, /healthz and /metrics."""

import io

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from backends.models import Backend
from ops.bootstrap import bootstrap
from projects.models import ApiToken, Membership, Project
from projects.tokens import digest_of

pytestmark = pytest.mark.django_db


def _createuser(*args) -> str:
    out = io.StringIO()
    call_command("createuser", *args, stdout=out)
    return out.getvalue()


def _works(token: str) -> bool:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client.get("/api/v1/projects/").status_code == 200


def test_bootstrap_is_idempotent_and_honours_the_token(monkeypatch):
    admin_token = "s3cr3t-admin-token-" + "x" * 20
    user, shown = bootstrap(admin_token)
    assert shown is None and user.is_superuser  # the operator chose it: nothing new to show
    assert _works(admin_token)
    again_user, again_shown = bootstrap(admin_token)
    assert (again_user.pk, again_shown) == (user.pk, None)
    assert ApiToken.objects.filter(user=user).count() == 1  # found by its hash, not made again
    assert Project.objects.get().name == "main"
    assert sorted(Backend.objects.values_list("name", "type")) == [("local", "local"), ("sim", "sim")]
    assert Membership.objects.get(user=user).role == "admin"


def test_createuser_prints_a_working_token_as_the_last_word(api, project):
    token = _createuser("carol", "--project", "main", "--role", "user").split()[-1]
    assert ApiToken.objects.get(digest=digest_of(token)).user.username == "carol"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert [p["name"] for p in client.get("/api/v1/projects/").json()["results"]] == ["main"]
    again = _createuser("carol")  # running it again keeps the token and cannot show it (only a hash is stored)
    assert token not in again and "createtoken carol" in again
    assert _works(token) and ApiToken.objects.filter(user__username="carol").count() == 1


def test_createuser_staff_and_bad_input(project):
    token = _createuser("ops", "--staff").split()[-1]
    assert ApiToken.objects.get(digest=digest_of(token)).user.is_staff
    with pytest.raises(CommandError):
        call_command("createuser", "dave", "--project", "nowhere", stdout=io.StringIO())


def test_healthz_answers_200_when_database_and_broker_answer(client):
    from django.conf import settings

    from core.heartbeats import record_pass

    for name in settings.FAST_RECONCILERS:  # the workers keep up (tests/test_health.py covers them)
        record_pass(name)
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_healthz_answers_503_when_the_broker_does_not(client, monkeypatch):
    from config.celery import app

    dead = "redis://127.0.0.1:1/0"  # nothing listens there
    monkeypatch.setattr(app, "connection_for_write", lambda *args, **kwargs: app.connection(dead))
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy" and response.json()["broker"] != "ok"


def test_metrics_count_resources_by_status(client, api, sim_backend):
    api.post("/api/v1/projects/main/apply/", data="type: fleet\nname: gpu8\nnodes: 1\n",
             content_type="application/yaml")
    body = client.get("/metrics").content.decode()
    assert "stackyard_block_count_corrections_total 0" in body
    assert "# TYPE stackyard_instances gauge" in body


@pytest.mark.django_db
def test_bootstrap_without_the_local_backend(settings):
    from backends.models import Backend
    from ops.bootstrap import bootstrap

    settings.LOCAL_BACKEND = False
    bootstrap(None)
    assert list(Backend.objects.values_list("name", flat=True)) == ["sim"]
