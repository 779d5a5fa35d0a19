"""The server config file (``STACKYARD_CONFIG``): projects and backends declared in YAML, applied at start
and by ``manage.py applyconfig``; backends it created and no longer lists are drained, then deleted."""

import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from backends.drivers.base import DriverError
from backends.drivers.sim import SimDriver
from backends.models import Backend
from backends.services import create_backend, terminate_backend_instances
from core.models import Event
from fleets.models import Instance
from ops.management.commands.runstack import Command as RunstackCommand
from ops.server_config import ServerConfigError, apply_at_start, apply_file, load_server_config
from projects.models import Membership, Project
from projects.services import create_user
from tests import factories

pytestmark = pytest.mark.django_db

TWO = """\
projects:
  - name: main
    backends:
      - {name: eu, type: sim, config: {regions: [eu-west-1]}}
      - name: us          # dstack's shape: provider fields beside type, creds
        type: sim
        regions: [us-east-1]
        creds: {type: access_key, access_key: "${SIM_KEY}", secret_key: "${{ env.SIM_SECRET }}"}
"""
ENV = {"SIM_KEY": "AKIA1", "SIM_SECRET": "s3cret"}


@pytest.fixture
def write(tmp_path):
    def write_file(text: str):
        path = tmp_path / f"config-{len(list(tmp_path.iterdir()))}.yml"
        path.write_text(text)
        return path

    return write_file


@pytest.fixture
def env(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


def _deny(reason: str):
    def check_access(self):
        raise DriverError(reason)

    return check_access


def _apply(path, **kwargs) -> dict[str, str]:
    return {f"{o.project}/{o.backend}": o.action for o in apply_file(path, **kwargs)}


def _events(**filters) -> list[tuple[str, str]]:
    return list(Event.objects.filter(resource_type="backend", **filters).order_by("id")
                .values_list("resource_name", "kind"))


def test_creates_projects_and_backends_in_both_shapes_owned_by_admin(write, env):
    admin, _ = create_user(username="admin", staff=True)
    assert _apply(write(TWO)) == {"main/": "created", "main/eu": "created", "main/us": "created"}
    us = Backend.objects.get(name="us")
    assert us.config == {"regions": ["us-east-1"]}
    assert us.credentials == {"type": "access_key", "access_key": "AKIA1", "secret_key": "s3cret"}
    assert Backend.objects.get(name="eu").config == {"regions": ["eu-west-1"]}
    assert Membership.objects.get(project__name="main").user == admin
    assert Event.objects.get(resource_name="us", kind="created").actor == "server config"


def test_applying_the_same_file_again_changes_nothing(write, env, project):
    path = write(TWO)
    apply_file(path)
    events = Event.objects.count()
    assert _apply(path) == {"main/eu": "unchanged", "main/us": "unchanged"}
    assert Event.objects.count() == events


def test_a_changed_config_or_credential_updates_the_backend(write, env, project, monkeypatch):
    apply_file(write(TWO))
    monkeypatch.setenv("SIM_SECRET", "rotated")
    outcomes = apply_file(write(TWO.replace("[eu-west-1]", "[eu-west-1, us-east-1]")))
    assert {(o.backend, o.action, o.detail) for o in outcomes} == {
        ("eu", "updated", "changed config"), ("us", "updated", "changed credentials")}
    assert Backend.objects.get(name="eu").config == {"regions": ["eu-west-1", "us-east-1"]}
    assert Backend.objects.get(name="us").credentials["secret_key"] == "rotated"
    assert _events(kind="updated") == [("eu", "updated"), ("us", "updated")]


def test_a_change_refused_by_the_access_check_keeps_the_stored_backend(write, env, project, monkeypatch):
    apply_file(write(TWO))
    monkeypatch.setenv("SIM_SECRET", "wrong")
    monkeypatch.setattr(SimDriver, "check_access", _deny("bad secret"))
    outcomes = {o.backend: o for o in apply_file(write(TWO))}
    assert outcomes["us"].failed
    assert "projects[0].backends[1].creds: the backend's provider refused access: bad secret" in outcomes["us"].detail
    assert outcomes["eu"].action == "unchanged"
    assert Backend.objects.get(name="us").credentials["secret_key"] == "s3cret"
    assert _events(kind="updated") == []


def test_a_missing_environment_variable_is_an_error_naming_it_and_nothing_is_applied(write, monkeypatch, project):
    monkeypatch.setenv("SIM_KEY", "AKIA1")
    monkeypatch.delenv("SIM_SECRET", raising=False)
    with pytest.raises(ServerConfigError, match=r"projects\[0\]\.backends\[1\]\.creds\.secret_key: "
                                                r"environment variable SIM_SECRET is not set"):
        apply_file(write(TWO))
    assert not Backend.objects.exists()


def test_env_references_in_every_spelling_and_the_escape(write):
    text = 'projects: [{name: main, backends: [{type: sim, credentials: {a: "${A}", b: "x-${env.A}", ' \
           'c: "${{env.A}}", d: "$${A}"}}]}]'
    (project,) = load_server_config(write(text), environ={"A": "1"})
    assert project.backends[0].credentials == {"a": "1", "b": "x-1", "c": "1", "d": "${A}"}
    assert project.backends[0].name == "sim"  # no name: named after its type, as in dstack


@pytest.mark.parametrize(("text", "error"), [
    ("projects: [{name: main, backends: [{type: sim}, {name: other, type: nope}]}]",
     r"projects\[0\]\.backends\[1\]\.type: backend type 'nope' has no driver"),
    ("projects: [{name: main, backends: [{type: sim, regions: [eu-west-1, '']}]}]",
     r"projects\[0\]\.backends\[0\]\.regions\[1\]: "),
    ("projects: [{name: main, backends: [{type: sim, config: {colour: red}}]}]",
     r"projects\[0\]\.backends\[0\]\.config\.colour: unknown sim config key"),
    ("projects: [{name: main, backends: [{type: sim, config: {}, regions: [eu-west-1]}]}]",
     r"projects\[0\]\.backends\[0\]\.regions: give the provider's fields either under 'config'"),
    ("projects: [{name: main, backends: [{type: sim}, {type: sim}]}]",
     r"projects\[0\]\.backends\[1\]\.name: backend 'sim' is listed twice"),
    ("projects: [{name: Main}]", r"projects\[0\]\.name: invalid name"),
    ("projects: [{name: main, owner: bob}]", r"projects\[0\]\.owner: unknown field"),
    ("encryption: {keys: []}", r"encryption: field 'encryption' is not supported yet"),
    ("projects: [{name: main}]\nprojects: []", r"duplicate key 'projects'"),
    ("projects: [", r"malformed YAML"),
])
def test_validation_errors_name_the_path_and_nothing_is_applied(write, text, error):
    with pytest.raises(ServerConfigError, match=error):
        apply_file(write(text))
    assert not Project.objects.exists()


def test_a_backend_type_cannot_change(write, project):
    factories.BackendFactory(project=project, name="box", type="local")
    (outcome,) = apply_file(write("projects: [{name: main, backends: [{name: box, type: sim}]}]"))
    assert outcome.failed
    assert "projects[0].backends[0].type: backend 'box' exists with type local" in outcome.detail
    assert Backend.objects.get(name="box").type == "local"


def test_backends_not_created_by_the_file_are_never_removed_by_it(write, sim_backend, project):
    create_backend(project=project, name="api-made", type="sim", actor="alice")
    assert _apply(write("projects: [{name: main, backends: []}]")) == {}
    assert set(Backend.objects.values_list("name", flat=True)) == {"sim", "api-made"}


def test_removed_backend_in_use_is_drained_reported_then_deleted_once_empty(
        write, env, project, apply, reconcile, caplog):
    path = write(TWO)
    apply_file(path)
    apply("type: fleet\nname: pair\nnodes: 2\nbackends: [us]\nresources: {gpu: L4:1}\n")
    reconcile()
    assert sorted(Instance.objects.filter(backend__name="us").values_list("name", flat=True)) == ["pair-0", "pair-1"]

    only_eu = write(TWO.split("      - name: us")[0])
    outcomes = {o.backend: o for o in apply_file(only_eu)}
    assert outcomes["us"].action == "drained"
    us = Backend.objects.get(name="us")
    assert us.status == "draining"
    assert "instances: pair-0, pair-1; volumes: -" in us.status_message
    conflict = Event.objects.get(resource_name="us", kind="config_conflict")
    assert "instances: pair-0, pair-1" in conflict.message and conflict.actor == "server config"
    assert "backend main/us removed from the server config file" in caplog.text

    events = Event.objects.count()
    assert _apply(only_eu) == {"main/eu": "unchanged", "main/us": "draining"}
    assert Event.objects.count() == events  # still in use, same lists: nothing new to say

    terminate_backend_instances(backend=us, actor="alice")
    reconcile()
    assert _apply(only_eu) == {"main/eu": "unchanged", "main/us": "deleted"}
    assert not Backend.objects.filter(name="us").exists()
    assert _events(resource_name="us")[-1] == ("us", "deleted")


def test_a_backend_listed_again_after_a_config_drain_is_resumed(write, env, project):
    path = write(TWO)
    apply_file(path)
    factories.VolumeFactory(project=project, backend=Backend.objects.get(name="us"), name="data")
    apply_file(write(TWO.split("      - name: us")[0]))
    assert Backend.objects.get(name="us").status == "draining"
    assert _apply(path) == {"main/eu": "unchanged", "main/us": "resumed"}
    assert Backend.objects.get(name="us").status == "active"


def test_dry_run_reports_and_changes_nothing(write, env, project):
    assert _apply(write(TWO), dry_run=True) == {"main/eu": "created", "main/us": "created"}
    assert not Backend.objects.exists() and not Event.objects.exists()


# --- the command and runstack ------------------------------------------------------------------------


def test_applyconfig_prints_changes_and_exits_zero(write, env, project, capsys):
    path = write(TWO)
    call_command("applyconfig", "--file", str(path), "--dry-run")
    assert "backend main/eu: would create" in capsys.readouterr().out
    call_command("applyconfig", "--file", str(path))
    out = capsys.readouterr().out
    assert "backend main/eu: created" in out and "backend main/us: created" in out
    call_command("applyconfig", "--file", str(path))
    assert capsys.readouterr().out.splitlines() == ["backend main/eu: unchanged", "backend main/us: unchanged"]


def test_applyconfig_uses_stackyard_config_and_exits_non_zero_on_errors(write, env, project, settings, monkeypatch):
    settings.SERVER_CONFIG = str(write(TWO))
    call_command("applyconfig")
    assert Backend.objects.count() == 2
    monkeypatch.setattr(SimDriver, "check_access", _deny("denied"))
    monkeypatch.setenv("SIM_SECRET", "other")
    with pytest.raises(CommandError, match=r"1 backend\(s\) could not be applied") as raised:
        call_command("applyconfig")
    assert raised.value.returncode == 1
    with pytest.raises(CommandError, match="environment variable MISSING is not set"):
        call_command("applyconfig", "--file", str(write("projects: [{name: main, backends: "
                                                        "[{type: sim, creds: {k: '${MISSING}'}}]}]")))
    settings.SERVER_CONFIG = None
    with pytest.raises(CommandError, match="pass --file PATH or set STACKYARD_CONFIG"):
        call_command("applyconfig")


def test_runstack_applies_the_file_at_start(write, env, settings):
    settings.SERVER_CONFIG = None
    assert apply_at_start() == []
    settings.SERVER_CONFIG = str(write(TWO))
    assert {o.backend for o in apply_at_start()} == {"", "eu", "us"}
    assert set(Backend.objects.values_list("name", flat=True)) == {"eu", "us"}


def test_runstack_stops_the_start_when_the_file_cannot_be_applied(write, env, project, settings, monkeypatch):
    settings.SERVER_CONFIG = str(write(TWO))
    monkeypatch.setattr(SimDriver, "check_access", _deny("denied"))
    command = RunstackCommand()
    command.lock = threading.Lock()
    with pytest.raises(CommandError, match=r"(?s)could not be applied:.*backend main/eu: error.*nothing was started"):
        command._apply_server_config()
    settings.SERVER_CONFIG = str(write("projects: main"))
    with pytest.raises(CommandError, match=r"STACKYARD_CONFIG: .*projects: expected a list"):
        command._apply_server_config()
