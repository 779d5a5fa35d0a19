"""``ps``, ``stop`` and ``logs``: the run commands."""

from __future__ import annotations

import time
from urllib.parse import quote

from rich.live import Live

from cli.client import Client
from cli.errors import EXIT_OK
from cli.follow import RUN_ENDS, describe_run
from cli.output import console, escape
from cli.tables import runs_table

WATCH_SECONDS = 2.0
JOB_ENDS = ("terminated", "aborted", "failed", "done")


def list_runs(client: Client, *, all_runs: bool) -> list[dict]:
    runs = client.list("runs/")
    return runs if all_runs else [run for run in runs if run.get("status") not in RUN_ENDS]


def show_runs(client: Client, *, all_runs: bool, watch: bool, iterations: int | None = None) -> int:
    """The runs table once, or refreshed every WATCH_SECONDS until Ctrl-C (or ``iterations`` refreshes)."""
    if not watch:
        console.print(runs_table(list_runs(client, all_runs=all_runs)))
        return EXIT_OK
    count = 0
    try:
        with Live(runs_table(list_runs(client, all_runs=all_runs)), console=console, auto_refresh=False) as live:
            while iterations is None or count < iterations:
                count += 1
                live.update(runs_table(list_runs(client, all_runs=all_runs)), refresh=True)
                if iterations is None or count < iterations:
                    time.sleep(WATCH_SECONDS)
    except KeyboardInterrupt:
        pass  # the way out of a watch, not an error
    return EXIT_OK


def get_run(client: Client, name: str) -> dict:
    return client.get_named("run", "runs", name)


def stop_run(client: Client, name: str, *, abort: bool) -> dict:
    run = client.post(f"runs/{quote(name, safe='')}/stop/", {"abort": abort})
    console.print(describe_run(run))
    return run


def print_logs(client: Client, name: str, *, job: str | None, follow: bool) -> int:
    """The job's output; with ``follow``, then its new lines until it ends.

    The server ends a followed stream after a while (it holds a web worker); the CLI then asks again
    for the new lines only (``tail=0``), so a long job is followed to its end."""
    path = f"runs/{quote(name, safe='')}/logs/"
    if not follow:
        answer = client.get(path, job=job)
        for line in answer.get("lines") or []:
            console.print(escape(line), soft_wrap=True)
        return EXIT_OK
    tail = None
    try:
        while True:
            with client.stream_lines(path, job=job, follow="true", tail=tail) as lines:
                for line in lines:
                    console.print(escape(line), soft_wrap=True)
            if _job_ended(client, name, job):
                return EXIT_OK
            tail = 0
    except KeyboardInterrupt:
        return EXIT_OK


def _job_ended(client: Client, name: str, job: str | None) -> bool:
    jobs = client.get(f"runs/{quote(name, safe='')}/jobs/", page_size=500)["results"]
    if job:
        chosen = sorted((j for j in jobs if j["name"] == job), key=lambda j: -j["submission_num"])
    else:  # the server's default: the latest submission of the first job
        chosen = sorted(jobs, key=lambda j: (j["replica_num"], j["job_num"], -j["submission_num"]))
    return not chosen or chosen[0].get("status") in JOB_ENDS
