"""The ``stackyard`` console script that ``make install`` puts in the venv, run as a user runs it."""

import signal
import subprocess

from tests.cli.conftest import STACKYARD, script_env


def test_the_console_script_is_installed():
    assert STACKYARD.exists(), f"{STACKYARD} is missing: run `make install`"
    result = subprocess.run([str(STACKYARD), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for command in ("apply", "ps", "stop", "logs", "event", "fleet", "volume", "backend", "config"):
        assert command in result.stdout


def test_event_watch_prints_new_events_as_they_come(stack, cli_config, fleet):
    """The script's output arrives line by line: the table first, then an event made after it."""
    command = [str(STACKYARD), "event", "--watch", "--watch-iterations", "3"]
    watch = subprocess.Popen(command, env=script_env(cli_config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        header = watch.stdout.readline()
        assert header.split()[:3] == ["TIME", "RESOURCE", "EVENT"], header + watch.stderr.read()
        body = "type: task\nname: cli-watched\ncommands: [sleep 0.1]\n"
        status, _ = stack.request("POST", "/api/v1/projects/main/apply/", body, "application/yaml")
        assert status == 202
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 0, err
    assert "run/cli-watched" in out and "submitted" in out


def test_the_console_script_reports_an_api_error_with_its_exit_code(stack, cli_config, fleet):
    result = subprocess.run([str(STACKYARD), "logs", "cli-never-ran"], env=script_env(cli_config), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 3
    assert "no run named 'cli-never-ran'" in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_stops_following_and_leaves_the_run_going(stack, cli_config, fleet, tmp_path):
    path = tmp_path / "forever.yml"
    path.write_text("type: task\nname: cli-ctrl-c\ncommands: [serve]\n")
    follow = subprocess.Popen([str(STACKYARD), "apply", "-f", str(path), "-y"], env=script_env(cli_config),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in follow.stdout:
            if line.startswith("task 'cli-ctrl-c': created"):
                break
        follow.send_signal(signal.SIGINT)
        out, err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    assert follow.returncode == 0, out + err
    assert "Stopped following; run 'cli-ctrl-c' goes on" in out and "Traceback" not in err
    status, run = stack.request("GET", "/api/v1/projects/main/runs/cli-ctrl-c/")
    assert status == 200 and run["status"] not in ("terminating", "terminated", "failed")
    stack.request("POST", "/api/v1/projects/main/runs/cli-ctrl-c/stop/", '{"abort": true}')
