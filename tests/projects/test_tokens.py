"""API tokens (SPEC section 8): stored hashed, shown once, named, expiring, revocable; the admin never shows
one; STACKYARD_ADMIN_TOKEN of any length from 32 characters; ``check --deploy`` passes in production shape."""

import io
import os
import secrets
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from ops.bootstrap import BootstrapError, bootstrap
from projects.models import ApiToken
from tests import factories

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent.parent
TOKENS = "/api/v1/users/me/tokens/"


def client_with(token: str, keyword: str = "Token") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{keyword} {token}")
    return client


def make(api, **body) -> dict:
    response = api.post(TOKENS, {"name": "laptop", **body}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def later(monkeypatch, seconds: float) -> None:
    """Move the clock forward."""
    now = timezone.now() + timedelta(seconds=seconds)
    monkeypatch.setattr(timezone, "now", lambda: now)


def token_queries(captured) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if "projects_apitoken" in q["sql"]]


# --- stored hashed, shown once -------------------------------------------------------------------


def test_the_secret_is_shown_once_and_never_stored(api):
    made = make(api)
    secret = made["token"]
    assert len(secret) >= 43 and made["prefix"] == secret[:6] and made["status"] == "active"
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)  # every row of every table
    assert secret not in dump.getvalue() and secret[6:] not in dump.getvalue()
    listed = api.get(TOKENS).json()["results"]
    assert made["id"] in [t["id"] for t in listed]
    assert secret not in str(listed) and all("token" not in t for t in listed)
    one = api.get(f"{TOKENS}{made['id']}/").json()
    assert one["name"] == "laptop" and "token" not in one and secret not in str(one)
    assert client_with(secret).get("/api/v1/projects/").status_code == 200


def test_both_header_forms_work_and_bad_ones_are_401(api, user):
    secret = make(api)["token"]
    for keyword in ("Token", "Bearer", "bearer"):
        assert client_with(secret, keyword).get("/api/v1/projects/").status_code == 200, keyword
    for header in (f"Token {secret} extra", "Token", f"Token {secret[:-1]}", f"Bearer x{secret}"):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=header)
        response = client.get("/api/v1/projects/")
        assert response.status_code == 401 and response.json()["code"] == "authentication_failed", header


def test_authenticating_costs_one_query_and_writes_last_used_at_most_once_a_minute(api, user, monkeypatch):
    secret = make(api)["token"]
    client = client_with(secret)
    with CaptureQueriesContext(connection) as first:
        assert client.get("/api/v1/projects/").status_code == 200
    assert [q.split()[0] for q in token_queries(first)] == ["SELECT", "UPDATE"]
    used = ApiToken.objects.get(prefix=secret[:6]).last_used_at
    assert used is not None
    later(monkeypatch, 30)
    with CaptureQueriesContext(connection) as second:
        assert client.get("/api/v1/projects/").status_code == 200
    assert [q.split()[0] for q in token_queries(second)] == ["SELECT"]  # the user comes with it (a join)
    assert ApiToken.objects.get(prefix=secret[:6]).last_used_at == used
    later(monkeypatch, 61)
    assert client.get("/api/v1/projects/").status_code == 200
    assert ApiToken.objects.get(prefix=secret[:6]).last_used_at > used


# --- named, expiring, revocable ------------------------------------------------------------------


@pytest.mark.parametrize(("expires_in", "seconds"), [("30d", 30 * 86400), (3600, 3600), ("12h", 43200),
                                                     (None, None)])
def test_expires_in_takes_durations_seconds_or_null(api, expires_in, seconds):
    made = make(api, expires_in=expires_in)
    if seconds is None:
        assert made["expires_at"] is None
    else:
        expires_at = ApiToken.objects.get(pk=made["id"]).expires_at
        assert abs((expires_at - timezone.now()).total_seconds() - seconds) < 60


@pytest.mark.parametrize(("body", "field"), [
    ({"expires_in": "soon"}, "expires_in"), ({"expires_in": -5}, "expires_in"), ({"expires_in": 0}, "expires_in"),
    ({"expires_in": True}, "expires_in"), ({"expires_in": "9999d"}, "expires_in"), ({"name": ""}, "name"),
    ({"name": "x" * 65}, "name"), ({"name": None}, "name"),
])
def test_bad_input_is_400_naming_the_field(api, body, field):
    response = api.post(TOKENS, {"name": "ci", **body}, format="json")
    assert response.status_code == 400 and response.json()["field"] == field, response.json()
    assert not ApiToken.objects.filter(name="ci").exists()


def test_an_expired_token_is_401_saying_so(api, monkeypatch):
    made = make(api, expires_in="1h")
    client = client_with(made["token"])
    assert client.get("/api/v1/projects/").status_code == 200
    later(monkeypatch, 3601)
    response = client.get("/api/v1/projects/")
    assert response.status_code == 401 and "token expired" in response.json()["detail"]
    assert api.get(f"{TOKENS}{made['id']}/").json()["status"] == "expired"


@pytest.mark.parametrize("how", ["revoke", "delete"])
def test_a_revoked_token_is_401_saying_so_and_stays_listed(api, how):
    made = make(api)
    client = client_with(made["token"])
    if how == "revoke":
        response = api.post(f"{TOKENS}{made['id']}/revoke/")
        assert response.status_code == 200 and response.json()["status"] == "revoked"
    else:
        assert api.delete(f"{TOKENS}{made['id']}/").status_code == 204
    response = client.get("/api/v1/projects/")
    assert response.status_code == 401 and "token revoked" in response.json()["detail"]
    assert api.post(f"{TOKENS}{made['id']}/revoke/").status_code == 200  # again: harmless
    assert [t["status"] for t in api.get(TOKENS).json()["results"] if t["id"] == made["id"]] == ["revoked"]


def test_a_user_sees_and_revokes_only_their_own_tokens(api, project):
    from projects.tokens import create_token

    mine = make(api)
    bob_api = client_with(create_token(user=factories.UserFactory(username="bob"), name="bob's")[1])
    assert [t["name"] for t in bob_api.get(TOKENS).json()["results"]] == ["bob's"]
    assert bob_api.get(f"{TOKENS}{mine['id']}/").status_code == 404
    assert bob_api.post(f"{TOKENS}{mine['id']}/revoke/").status_code == 404
    assert bob_api.delete(f"{TOKENS}{mine['id']}/").status_code == 404
    assert client_with(mine["token"]).get("/api/v1/projects/").status_code == 200


def test_an_inactive_user_is_401(api, user):
    secret = make(api)["token"]
    user.is_active = False
    user.save(update_fields=["is_active"])
    response = client_with(secret).get("/api/v1/projects/")
    assert response.status_code == 401 and "inactive" in response.json()["detail"]


# --- the admin never shows one ---------------------------------------------------------------------


def test_the_admin_lists_and_revokes_tokens_but_never_shows_one(admin_client, api):
    made = make(api, expires_in="30d")
    token = ApiToken.objects.get(pk=made["id"])
    pages = [admin_client.get(reverse("admin:projects_apitoken_changelist")),
             admin_client.get(reverse("admin:projects_apitoken_change", args=[token.pk]))]
    for page in pages:
        text = page.content.decode()
        assert page.status_code == 200 and "laptop" in text and token.prefix in text
        assert made["token"] not in text and made["token"][6:20] not in text and token.digest not in text
    assert admin_client.get(reverse("admin:projects_apitoken_add")).status_code == 403
    response = admin_client.post(reverse("admin:projects_apitoken_changelist"),
                                 {"action": "revoke", "_selected_action": [token.pk]}, follow=True)
    assert "revoked at" in response.content.decode() and made["token"] not in response.content.decode()
    assert client_with(made["token"]).get("/api/v1/projects/").status_code == 401


# --- createtoken ------------------------------------------------------------------------------------


def test_createtoken_prints_a_new_working_token_once(user):
    out = io.StringIO()
    call_command("createtoken", "alice", "--name", "ci", "--expires", "30d", stdout=out)
    secret = out.getvalue().split()[-1]
    token = ApiToken.objects.get(user=user, name="ci")
    assert token.prefix == secret[:6] and token.digest != secret
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    assert client_with(secret).get("/api/v1/projects/").status_code == 200
    with pytest.raises(CommandError, match="no user"):
        call_command("createtoken", "nobody", stdout=io.StringIO())
    with pytest.raises(CommandError, match="--expires"):
        call_command("createtoken", "alice", "--expires", "soon", stdout=io.StringIO())


# --- STACKYARD_ADMIN_TOKEN --------------------------------------------------------------------------


def test_an_admin_token_of_any_length_from_32_works_end_to_end():
    long_token = secrets.token_urlsafe(150)[:200]
    admin, shown = bootstrap(long_token)
    assert shown is None and len(long_token) == 200
    response = client_with(long_token).get("/api/v1/projects/")
    assert response.status_code == 200 and [p["name"] for p in response.json()["results"]] == ["main"]
    assert long_token not in str(list(ApiToken.objects.values()))


@pytest.mark.parametrize("bad", ["s3cr3t-admin-token", "x" * 31, "a" * 20 + " " + "b" * 20])
def test_a_short_admin_token_is_refused_at_start(settings, bad):
    with pytest.raises(BootstrapError, match="STACKYARD_ADMIN_TOKEN"):
        bootstrap(bad)
    settings.ADMIN_TOKEN = bad
    with pytest.raises(CommandError, match="STACKYARD_ADMIN_TOKEN must"):
        call_command("runstack", stdout=io.StringIO())  # refused before anything starts
    assert not ApiToken.objects.exists()


def test_changing_the_admin_token_rotates_it():
    first, second = "a" * 40, "b" * 40
    bootstrap(first)
    bootstrap(second)
    assert client_with(second).get("/api/v1/projects/").status_code == 200
    assert client_with(first).get("/api/v1/projects/").status_code == 401
    with pytest.raises(BootstrapError, match="revoked"):
        bootstrap(first)  # a revoked token does not come back because the variable names it again


def test_without_the_variable_a_token_is_made_only_when_admin_has_none():
    admin, shown = bootstrap(None)
    assert shown and client_with(shown).get("/api/v1/projects/").status_code == 200
    assert bootstrap(None)[1] is None  # it has one: nothing to show, nothing made
    ApiToken.objects.filter(user=admin).update(revoked_at=timezone.now())
    again = bootstrap(None)[1]
    assert again and again != shown and client_with(again).get("/api/v1/projects/").status_code == 200


def test_drf_keys_are_moved_into_hashed_tokens(user):
    """The data migration: a database that had DRF's authtoken table keeps its keys working, hashed."""
    import importlib

    from django.apps import apps

    migration = importlib.import_module("projects.migrations.0005_hash_drf_tokens")
    key = secrets.token_hex(20)
    with connection.cursor() as cursor:
        cursor.execute('CREATE TABLE authtoken_token ("key" varchar(40) PRIMARY KEY, created timestamp, user_id int)')
        cursor.execute('INSERT INTO authtoken_token ("key", created, user_id) VALUES (%s, %s, %s)',
                       [key, "2024-01-02 03:04:05", user.pk])
    migration.hash_drf_tokens(apps, type("Editor", (), {"connection": connection})())
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM authtoken_token")
        assert cursor.fetchone()[0] == 0  # no key left in the clear
    token = ApiToken.objects.get(user=user, name="migrated")
    assert token.created_at.year == 2024 and key not in str(list(ApiToken.objects.values()))
    assert client_with(key).get("/api/v1/projects/").status_code == 200


# --- check --deploy ----------------------------------------------------------------------------------


def _check_deploy(tmp_path, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "STACKYARD_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
        env={**base, "STACKYARD_DATA_DIR": str(tmp_path), **env}, capture_output=True, text=True, timeout=120)


def test_check_deploy_passes_in_production_shape_and_the_embedded_default_stays_http(tmp_path, client, settings):
    production = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "DJANGO_ALLOWED_HOSTS": "example.com",
                  "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)}
    result = _check_deploy(tmp_path, **production, STACKYARD_HTTPS="1")
    assert result.returncode == 0, result.stdout + result.stderr
    without_https = _check_deploy(tmp_path, **production)
    assert without_https.returncode != 0 and "SECURE_SSL_REDIRECT" in without_https.stderr + without_https.stdout
    # The embedded default (these tests' settings) answers plain HTTP, with no redirect and plain cookies.
    assert not settings.SECURE_SSL_REDIRECT and not settings.SESSION_COOKIE_SECURE
    response = client.get("/api/v1/projects/")
    assert response.status_code == 401 and response.json()["code"] == "not_authenticated"
