"""``stackyard config`` and the errors that need no server: the config file, usage mistakes, a server
that does not answer. None of these start the stack."""

import socket
import stat

import yaml

from cli.apply import apply_body
from cli.errors import EXIT_UNREACHABLE, EXIT_USAGE
from tests.cli.conftest import Cli


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def test_config_writes_a_private_file_and_shows_it_with_the_token_masked(tmp_path):
    cli = Cli(tmp_path / "home" / "config.yml")
    result = cli("config", "--url", "http://127.0.0.1:9999/", "--token", "secret-token-123", "--project", "team")
    assert result.exit_code == 0, result.output
    path = tmp_path / "home" / "config.yml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert yaml.safe_load(path.read_text()) == {"url": "http://127.0.0.1:9999", "token": "secret-token-123",
                                                "project": "team"}

    shown = cli("config")
    assert shown.exit_code == 0
    assert "http://127.0.0.1:9999" in shown.output and "team" in shown.output
    assert "secret-token-123" not in shown.output


def test_config_changes_only_what_is_given(tmp_path):
    cli = Cli(tmp_path / "config.yml")
    cli("config", "--url", "http://a:1", "--token", "t1")
    assert cli("config", "--project", "other").exit_code == 0
    assert yaml.safe_load((tmp_path / "config.yml").read_text()) == {"url": "http://a:1", "token": "t1",
                                                                     "project": "other"}


def test_config_refuses_a_url_that_is_not_http(tmp_path):
    result = Cli(tmp_path / "config.yml")("config", "--url", "127.0.0.1:8000", "--token", "t")
    assert result.exit_code == EXIT_USAGE
    assert "expected an http:// or https:// address" in result.output
    assert not (tmp_path / "config.yml").exists()


def test_a_command_without_a_configuration_says_what_to_run(tmp_path):
    result = Cli(tmp_path / "none.yml")("ps")
    assert result.exit_code == EXIT_USAGE
    assert "stackyard config --url URL --token TOKEN" in result.output


def test_a_server_that_does_not_answer_is_a_clear_message_not_a_traceback(tmp_path):
    cli = Cli(tmp_path / "config.yml")
    url = f"http://127.0.0.1:{_closed_port()}"
    cli("config", "--url", url, "--token", "t")
    for args in (["ps"], ["event"], ["fleet", "list"], ["stop", "x", "-y"], ["logs", "x", "-f"]):
        result = cli(*args)
        assert result.exit_code == EXIT_UNREACHABLE, (args, result.output)
        assert f"cannot reach {url}" in result.output


def test_apply_of_a_missing_file_is_a_usage_error(tmp_path):
    cli = Cli(tmp_path / "config.yml")
    cli("config", "--url", "http://127.0.0.1:1", "--token", "t")
    result = cli("apply", "-f", str(tmp_path / "nope.yml"), "-y")
    assert result.exit_code == EXIT_USAGE
    assert "no such file" in result.output


def test_an_unknown_option_is_a_usage_error(tmp_path):
    assert Cli(tmp_path / "config.yml")("ps", "--bogus").exit_code == EXIT_USAGE


def test_the_apply_request_carries_the_shells_values_of_valueless_env_entries():
    listed = "type: task\nenv:\n  - HF_TOKEN\n  - MODE=fast\n  - UNSET_ONE\n"
    assert apply_body(listed, {"HF_TOKEN": "hf_x", "MODE": "slow"}) == {
        "configuration": listed, "env": {"HF_TOKEN": "hf_x"}}  # UNSET_ONE left out: the server's 400 names it
    mapping = "type: task\nenv:\n  HF_TOKEN:\n  MODE: fast\n"
    assert apply_body(mapping, {"HF_TOKEN": "hf_x"})["env"] == {"HF_TOKEN": "hf_x"}
    assert apply_body("type: task\nenv: [A=1]\n", {"A": "2"}) == {"configuration": "type: task\nenv: [A=1]\n"}
    assert apply_body("type: [broken\n", {}) == {"configuration": "type: [broken\n"}  # the server says what is wrong
