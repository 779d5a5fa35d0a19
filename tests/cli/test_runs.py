"""``stackyard ps``, ``stop``, ``logs`` and ``event`` against a real stack."""

from cli.errors import EXIT_API_ERROR
from tests.cli.conftest import api_get, wait_for


def _status(stack, name: str) -> str:
    return api_get(stack, f"runs/{name}/")[1].get("status")


def _row(output: str, name: str) -> list[str]:
    rows = [line.split() for line in output.splitlines() if line.split()[:1] == [name]]
    assert rows, f"no row for {name}:\n{output}"
    return rows[0]


def test_ps_stop_and_abort(cli, write, stack):
    # Two tasks that run until stopped (a sim script with no sleep and no exit), started together.
    for name in ("cli-stop", "cli-abort"):
        applied = cli("apply", "-f", write(f"{name}.yml", f"type: task\nname: {name}\ncommands: [serve]\n"), "-y", "-d")
        assert applied.exit_code == 0, applied.output
    wait_for(stack, "both runs to be running", lambda: {_status(stack, "cli-stop"), _status(stack, "cli-abort")}
             == {"running"})

    active = cli("ps")
    assert active.exit_code == 0, active.output
    assert _row(active.output, "cli-stop")[1:3] == ["task", "running"]
    watched = cli("ps", "-w", "--watch-iterations", "2")
    assert watched.exit_code == 0 and "cli-abort" in watched.output

    declined = cli("stop", "cli-stop", input="n\n")
    assert declined.exit_code == 0 and "Stop run 'cli-stop'?" in declined.output and "Cancelled" in declined.output
    assert _status(stack, "cli-stop") == "running"

    stopped = cli("stop", "cli-stop", "-y")
    assert stopped.exit_code == 0, stopped.output
    assert "run 'cli-stop':" in stopped.output
    aborted = cli("stop", "cli-abort", "-x", "-y")
    assert aborted.exit_code == 0, aborted.output

    wait_for(stack, "both runs to end", lambda: {_status(stack, "cli-stop"), _status(stack, "cli-abort")}
             == {"terminated"})
    assert api_get(stack, "runs/cli-stop/")[1]["termination_reason"] == "stopped_by_user"
    assert api_get(stack, "runs/cli-abort/")[1]["termination_reason"] == "aborted_by_user"
    assert "cli-stop" not in cli("ps").output
    assert _row(cli("ps", "-a").output, "cli-abort")[2] == "terminated"


def test_stop_of_an_unknown_run_names_it(cli):
    result = cli("stop", "cli-nosuch", "-y")
    assert result.exit_code == EXIT_API_ERROR
    assert "no run named 'cli-nosuch' in project 'main'" in result.output


def test_logs_print_the_output_and_follow_it_to_the_end(cli, write, stack):
    text = "type: task\nname: cli-logs\ncommands: [echo hello, sleep 2, echo bye]\n"
    assert cli("apply", "-f", write("l.yml", text), "-y", "-d").exit_code == 0
    wait_for(stack, "the job to start", lambda: _status(stack, "cli-logs") not in ("submitted", "provisioning"))

    followed = cli("logs", "cli-logs", "-f")  # returns once the job has ended
    assert followed.exit_code == 0, followed.output
    assert "$ echo hello" in followed.output and "$ echo bye" in followed.output
    assert followed.output.splitlines()[-1].startswith("[sim] done")

    printed = cli("logs", "cli-logs")
    assert printed.exit_code == 0
    assert printed.output.splitlines() == followed.output.splitlines()


def test_event_shows_what_happened(cli, fleet):
    result = cli("event", "--type", "fleet", "--name", fleet)
    assert result.exit_code == 0, result.output
    kinds = [line.split()[3] for line in result.output.splitlines() if f"fleet/{fleet}" in line]
    assert kinds[0] == "submitted" and "active" in kinds, result.output

    watched = cli("event", "--watch", "--watch-iterations", "1", "--type", "fleet", "--name", fleet)
    assert watched.exit_code == 0 and f"fleet/{fleet}" in watched.output
