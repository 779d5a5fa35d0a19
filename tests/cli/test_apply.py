"""``stackyard apply``: plan, confirm, apply, follow — against a real stack."""

import subprocess

from cli.errors import EXIT_API_ERROR, EXIT_FAILED
from tests.cli.conftest import STACKYARD, api_get, script_env, wait_for

QUICK_TASK = "type: task\nname: {name}\ncommands: [echo start, sleep 1, echo end]\n"
# A broken stack fails the test in half a minute instead of hanging it.
FOLLOW = ("--timeout", "30")
SERVICE = "type: service\nname: {name}\ncommands: [{command}]\nport: 8000\nreplicas: {replicas}\n"


def test_a_task_is_followed_until_done_and_a_failing_one_exits_non_zero(cli, write, stack, cli_config):
    # The failing task runs as the installed console script, at the same time as the other one in-process.
    bad = write("bad.yml", "type: task\nname: cli-bad\ncommands: [echo boom, exit 3]\n")
    failing = subprocess.Popen([str(STACKYARD), "apply", "-f", bad, "-y", *FOLLOW], env=script_env(cli_config),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        result = cli("apply", "-f", write("task.yml", QUICK_TASK.format(name="cli-quick")), "-y", *FOLLOW)
        out, err = failing.communicate(timeout=60)
    finally:
        failing.kill()
    assert result.exit_code == 0, result.output
    assert "Plan: will create task 'cli-quick'" in result.output
    assert "$ echo end" in result.output  # the task's output, as it ran
    assert "run 'cli-quick': done" in result.output
    assert api_get(stack, "runs/cli-quick/")[1]["status"] == "done"

    assert failing.returncode == EXIT_FAILED, out + err
    assert "run 'cli-bad': failed" in out and "exited with status 3" in out


def test_dry_run_shows_the_plan_and_creates_nothing(cli, write, stack):
    path = write("dry.yml", "type: task\nname: cli-dry\ncommands: [python train.py]\nresources:\n  gpu: A100:2\n")
    result = cli("apply", "-f", path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "Plan: will create task 'cli-dry'" in result.output
    assert "gpu=A100:2" in result.output and "python train.py" in result.output
    # The sim's cheapest offer with two A100s, as dstack's plan lists offers.
    assert "fit; the cheapest first" in result.output and "gpu-a100-8 (8xA100)" in result.output
    assert api_get(stack, "runs/cli-dry/")[0] == 404


def test_declining_the_plan_applies_nothing(cli, write, stack):
    result = cli("apply", "-f", write("no.yml", QUICK_TASK.format(name="cli-declined")), input="n\n")
    assert result.exit_code == 0, result.output
    assert "Apply this plan?" in result.output and "Cancelled" in result.output
    assert api_get(stack, "runs/cli-declined/")[0] == 404


def test_updating_a_service_shows_the_changes_then_applies_them(cli, write, stack):
    path = write("svc.yml", SERVICE.format(name="cli-svc", command="serve", replicas=1))
    first = cli("apply", "-f", path, "-y", *FOLLOW)
    assert first.exit_code == 0, first.output
    assert "1/1 replicas ready" in first.output

    update = write("svc2.yml", SERVICE.format(name="cli-svc", command="serve --v2", replicas=2))
    plan = cli("apply", "-f", update, "--dry-run")
    assert plan.exit_code == 0, plan.output
    assert "Plan: will update service 'cli-svc'" in plan.output
    lines = plan.output.splitlines()
    assert any(line.split()[:3] == ["replicas", "1", "2"] for line in lines), plan.output
    assert any(line.split()[:3] == ["commands", "serve", "serve"] and "--v2" in line for line in lines), plan.output
    assert "replicas to start: 1" in plan.output and "replicas to replace: 0" in plan.output
    assert api_get(stack, "runs/cli-svc/")[1]["replicas"]["desired"] == 1  # a dry run changes nothing

    applied = cli("apply", "-f", update, "-y", "-d")
    assert applied.exit_code == 0, applied.output
    assert "service 'cli-svc': updated" in applied.output
    assert api_get(stack, "runs/cli-svc/")[1]["replicas"]["desired"] == 2

    same = cli("apply", "-f", update, "-y", *FOLLOW)
    assert same.exit_code == 0 and "is up to date: nothing to change" in same.output
    cli("stop", "cli-svc", "-x", "-y")


def test_a_bad_file_prints_the_servers_detail(cli, write, stack):
    result = cli("apply", "-f", write("bad.yml", "type: task\nname: cli-typo\ncomands: [echo]\n"), "-y")
    assert result.exit_code == EXIT_API_ERROR, result.output
    assert "Error:" in result.output and "comands" in result.output and "HTTP 400" in result.output

    result = cli("apply", "-f", write("broken.yml", "type: task\nname: [unclosed\n"), "-y")
    assert result.exit_code == EXIT_API_ERROR, result.output
    assert "malformed YAML" in result.output
    assert api_get(stack, "runs/cli-typo/")[0] == 404


def test_valueless_env_entries_come_from_the_shell(cli, write, stack):
    text = "type: task\nname: cli-env\ncommands: [sleep 1]\nenv:\n  - CLI_SECRET\n  - MODE=fast\n"
    path = write("env.yml", text)

    missing = cli("apply", "-f", path, "-y", env={"CLI_SECRET": None})
    assert missing.exit_code == EXIT_API_ERROR, missing.output
    assert "no value for CLI_SECRET" in missing.output
    assert api_get(stack, "runs/cli-env/")[0] == 404

    plan = cli("apply", "-f", path, "--dry-run", env={"CLI_SECRET": "s3cret-value"})
    assert plan.exit_code == 0, plan.output
    assert "CLI_SECRET, MODE" in plan.output
    assert "s3cret-value" not in plan.output  # the plan names variables, never shows their values

    applied = cli("apply", "-f", path, "-y", "-d", env={"CLI_SECRET": "s3cret-value"})
    assert applied.exit_code == 0, applied.output
    assert api_get(stack, "runs/cli-env/")[1]["spec"]["env"] == {"CLI_SECRET": "s3cret-value", "MODE": "fast"}


def test_a_volume_is_applied_and_followed_until_active(cli, write, stack):
    text = "type: volume\nname: cli-vol\nbackend: sim\nregion: eu-west-1\nsize: 10GB\n"
    result = cli("apply", "-f", write("vol.yml", text), "-y", *FOLLOW)
    assert result.exit_code == 0, result.output
    assert "volume 'cli-vol': active" in result.output
    wait_for(stack, "the volume to be active", lambda: api_get(stack, "volumes/cli-vol/")[1]["status"] == "active")
