"""``stackyard fleet|volume|backend list|delete`` against a real stack."""

import json

from cli.errors import EXIT_API_ERROR
from tests.cli.conftest import api_get


def _row(output: str, name: str) -> list[str]:
    rows = [line.split() for line in output.splitlines() if line.split()[:1] == [name]]
    assert rows, f"no row for {name}:\n{output}"
    return rows[0]


def test_fleet_list_and_delete(cli, write, stack, fleet):
    assert _row(cli("fleet", "list").output, fleet)[1] == "active"
    assert _row(cli("fleet").output, fleet)[1] == "active"  # alone, the group lists

    text = "type: fleet\nname: cli-spare\nnodes: 1\nbackends: [sim]\nresources:\n  cpu: 4\n"
    assert cli("apply", "-f", write("f.yml", text), "-y", "-d").exit_code == 0

    declined = cli("fleet", "delete", "cli-spare", input="n\n")
    assert "Terminate fleet 'cli-spare' and its instances?" in declined.output and "Cancelled" in declined.output
    assert api_get(stack, "fleets/cli-spare/")[1]["status"] in ("submitted", "active")

    deleted = cli("fleet", "delete", "cli-spare", "-y")
    assert deleted.exit_code == 0, deleted.output
    assert "fleet 'cli-spare':" in deleted.output
    status, body = api_get(stack, "fleets/cli-spare/")
    assert status == 404 or body["status"] in ("terminating", "terminated")


def test_volume_list_and_delete(cli, write, stack):
    text = "type: volume\nname: cli-scratch\nbackend: sim\nregion: us-east-1\nsize: 5GB\n"
    assert cli("apply", "-f", write("v.yml", text), "-y", "--timeout", "30").exit_code == 0
    row = _row(cli("volume", "list").output, "cli-scratch")
    assert row[1:3] == ["active", "sim"] and "5GB" in row

    deleted = cli("volume", "delete", "cli-scratch", "-y")
    assert deleted.exit_code == 0, deleted.output
    assert "volume 'cli-scratch': deleting" in deleted.output or "volume 'cli-scratch': deleted" in deleted.output


def test_backend_list_and_delete(cli, stack):
    body = json.dumps({"name": "cli-spare-sim", "type": "sim", "config": {}})
    assert stack.request("POST", "/api/v1/projects/main/backends/", body)[0] == 201
    listed = cli("backend", "list")
    assert _row(listed.output, "sim")[1:3] == ["sim", "active"]
    assert "cli-spare-sim" in listed.output

    deleted = cli("backend", "delete", "cli-spare-sim", "-y")
    assert deleted.exit_code == 0, deleted.output
    assert api_get(stack, "backends/cli-spare-sim/")[0] == 404

    in_use = cli("backend", "delete", "sim", "-y")  # the fleet's instances are on it: the server refuses
    assert in_use.exit_code == EXIT_API_ERROR
    assert "HTTP 409" in in_use.output


def test_delete_of_an_unknown_resource_names_it(cli):
    for kind in ("fleet", "volume", "backend"):
        result = cli(kind, "delete", "cli-nosuch", "-y")
        assert result.exit_code == EXIT_API_ERROR
        assert f"no {kind} named 'cli-nosuch'" in result.output
