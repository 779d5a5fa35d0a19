"""Following what an apply started until it settles, with a live status line.

A service is followed until its ready replicas reach the desired count (or it is running, when the
server gives no replica counts), a dev environment until it is running, a task until it finishes
(as ``dstack apply`` attaches to a task): its output is printed as it comes, and its outcome is the
exit code. Fleets and volumes are followed until active. Ctrl-C only stops the following.

Each change of state is also printed as a line, so a log of the command (CI, a pipe, a test) shows
the way the run went, where the live line alone would leave nothing.
"""

from __future__ import annotations

import time
from urllib.parse import quote

from cli.client import Client
from cli.errors import EXIT_FAILED, EXIT_OK, ApiError, CliError
from cli.output import console, escape, styled

POLL_SECONDS = 1.0
RUN_ENDS = ("done", "failed", "terminated")
# A run terminated for one of these reasons ended as someone asked: not a failure of the command.
CLEAN_TERMINATIONS = ("stopped_by_user", "aborted_by_user", "all_jobs_done")
RESOURCE_GOALS = {"fleet": ("active",), "volume": ("active",)}
RESOURCE_ENDS = {"fleet": ("failed", "terminated"), "volume": ("failed", "deleted")}
RESOURCE_PATHS = {"fleet": "fleets", "volume": "volumes"}


def run_outcome(run: dict) -> int | None:
    """The exit code once the run has got where ``apply`` waits for, else None (keep following)."""
    status = run.get("status")
    if status == "done":
        return EXIT_OK
    if status == "failed":
        return EXIT_FAILED
    if status == "terminated":
        return EXIT_OK if run.get("termination_reason") in CLEAN_TERMINATIONS else EXIT_FAILED
    if status == "pending" and (run.get("spec") or {}).get("schedule"):
        return EXIT_OK  # a scheduled run waits for its next time: nothing to follow until then
    if status != "running" or run.get("type") == "task":
        return None
    counts = run.get("replicas")
    if run.get("type") == "service" and counts:
        return EXIT_OK if counts.get("ready", 0) >= counts.get("desired", 0) else None
    return EXIT_OK


def describe_run(run: dict) -> str:
    words = [f"run '{escape(run['name'])}': {styled(run.get('status'))}"]
    counts = run.get("replicas")
    if counts:
        words.append(f"{counts.get('ready', 0)}/{counts.get('desired', 0)} replicas ready")
    message = run.get("status_message") or (run.get("termination_reason") if run.get("status") in RUN_ENDS else "")
    if message:
        words.append(escape(message))
    return " — ".join(words)


def follow_run(client: Client, name: str, *, timeout: float | None = None) -> int:
    """Poll the run until ``run_outcome`` says it settled; print its state changes (and a task's output)."""
    try:
        return _follow_run(client, name, timeout)
    except KeyboardInterrupt:
        console.print(f"Stopped following; run '{escape(name)}' goes on (stackyard ps, logs -f, stop)")
        return EXIT_OK


def _follow_run(client: Client, name: str, timeout: float | None) -> int:
    path = f"runs/{quote(name, safe='')}/"
    deadline = None if timeout is None else time.monotonic() + timeout
    last, seen_lines = "", 0
    with console.status("waiting for the run...") as live:
        while True:
            run = client.get(path)
            line = describe_run(run)
            if line != last:
                console.print(line)
                live.update(line)
                last = line
            if run.get("type") == "task" and run.get("status") in ("running", *RUN_ENDS):
                seen_lines = _print_new_output(client, path, seen_lines)
            outcome = run_outcome(run)
            if outcome is not None:
                return outcome
            _wait(deadline, f"run '{name}' is still {run.get('status')}")


def follow_resource(client: Client, kind: str, name: str, *, timeout: float | None = None) -> int:
    """Poll a fleet or volume until it is active (exit 0) or failed (exit 1)."""
    try:
        return _follow_resource(client, kind, name, timeout)
    except KeyboardInterrupt:
        console.print(f"Stopped following; {kind} '{escape(name)}' goes on")
        return EXIT_OK


def _follow_resource(client: Client, kind: str, name: str, timeout: float | None) -> int:
    path = f"{RESOURCE_PATHS[kind]}/{quote(name, safe='')}/"
    deadline = None if timeout is None else time.monotonic() + timeout
    last = ""
    with console.status(f"waiting for {kind} '{escape(name)}'...") as live:
        while True:
            resource = client.get(path)
            status = resource.get("status")
            line = f"{kind} '{escape(name)}': {styled(status)}"
            if resource.get("status_message"):
                line += f" — {escape(resource['status_message'])}"
            if line != last:
                console.print(line)
                live.update(line)
                last = line
            if status in RESOURCE_GOALS[kind]:
                return EXIT_OK
            if status in RESOURCE_ENDS[kind]:
                return EXIT_FAILED
            _wait(deadline, f"{kind} '{name}' is still {status}")


def _print_new_output(client: Client, path: str, seen: int) -> int:
    """Print the task's output lines past the first ``seen``; returns how many there are now."""
    try:
        lines = client.get(path + "logs/").get("lines") or []
    except ApiError:
        return seen  # the provider could not say this time: the output comes with the next poll
    for line in lines[seen:]:
        console.print(escape(line), style="dim", soft_wrap=True)
    return max(seen, len(lines))


def _wait(deadline: float | None, still: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise CliError(f"{still} after the --timeout; stopped following (it keeps going on the server)",
                       exit_code=EXIT_FAILED)
    time.sleep(POLL_SECONDS)
