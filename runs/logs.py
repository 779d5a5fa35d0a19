"""A job's output, read from its provider: the service behind ``GET .../runs/{name}/logs/``.

Works for every driver (``Driver.job_logs``: the sim's synthetic lines, the local driver's real output).

* ``log_job`` picks the job: the one named (its latest submission), by default the run's first job;
  ``NotFound`` if the run has no such job.
* ``job_log_lines``: the last ``tail`` lines (all of them, up to ``MAX_TAIL``, when no tail is given). A
  job that never started a workload, or whose workload the provider no longer knows, has no lines; any
  other provider error is a ``ProviderError`` (502, 503 when transient).
* ``follow_job_logs``: the same lines, then the new ones as they come (the provider is asked every
  ``FOLLOW_POLL_SECONDS``), until the job's workload has ended and its last lines are sent, or
  ``FOLLOW_SECONDS`` have passed (the client asks again). Its first read happens at the call, so the
  caller can still answer its error; a later provider error ends the stream (a transient one is retried).
  A follow holds one web worker while it streams: the cap keeps that bounded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from backends.drivers.base import DriverError, NotFoundError, TransientError
from backends.drivers.registry import get_driver
from backends.orphans import ProviderError, provider_error
from core.errors import InvalidInput, NotFound
from runs.models import JOB_FINISHED_STATES, Job, Run

logger = logging.getLogger(__name__)

MAX_TAIL = 10_000
FOLLOW_SECONDS = 60
FOLLOW_POLL_SECONDS = 0.5


def parse_tail(value: str | None) -> int | None:
    """The ``tail`` query parameter: a whole number from 0 to ``MAX_TAIL``, or None when absent."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or int(text) > MAX_TAIL:
        raise InvalidInput(f"tail: expected a whole number from 0 to {MAX_TAIL}, got {value[:40]!r}", field="tail")
    return int(text)


def parse_job_name(value: str | None) -> str | None:
    """The ``job`` query parameter: a job name, or None when absent (an empty one is a 400)."""
    if value is None:
        return None
    if not value.strip():
        raise InvalidInput("job: expected a job name such as 'train-0-0'", field="job")
    return value.strip()


def log_job(*, run: Run, name: str | None = None) -> Job:
    """The job whose output is asked for: ``name``'s latest submission, else the run's first job."""
    jobs = Job.objects.filter(run=run).select_related("instance__backend")
    job = (jobs.filter(name=name).order_by("-submission_num") if name
           else jobs.order_by("replica_num", "job_num", "-submission_num")).first()
    if job is None:
        detail = f"run '{run.name}' has no job named '{name}'" if name else f"run '{run.name}' has no job yet"
        raise NotFound(detail, field="job")
    return job


def job_log_lines(*, job: Job, tail: int | None = None) -> list[str]:
    """The job's last ``tail`` output lines, oldest first (see the module docstring)."""
    if tail == 0:
        return []
    return _read(job, tail=tail or MAX_TAIL, state=False)[1]


def follow_job_logs(*, job: Job, tail: int | None = None, seconds: float = FOLLOW_SECONDS,
                    poll: float = FOLLOW_POLL_SECONDS) -> Iterator[str]:
    """The job's lines (the last ``tail``, up to ``MAX_TAIL``), then each new one, until it ended."""
    ended, lines = _read(job, tail=None)
    first = lines[-tail:] if tail else ([] if tail == 0 else lines[-MAX_TAIL:])
    return _follow(job.pk, first, len(lines), ended, time.monotonic() + seconds, poll)


def _follow(job_pk: int, first: list[str], seen: int, ended: bool, deadline: float, poll: float) -> Iterator[str]:
    yield from first
    while not ended and time.monotonic() < deadline:
        time.sleep(poll)
        job = Job.objects.select_related("instance__backend").get(pk=job_pk)
        try:
            ended, lines = _read(job, tail=None)
        except ProviderError as err:
            if isinstance(err.__cause__, TransientError):
                continue
            logger.warning("following the logs of job %s stopped: %s", job.name, err)
            return
        yield from lines[seen:]
        seen = len(lines)


def _read(job: Job, *, tail: int | None, state: bool = True) -> tuple[bool, list[str]]:
    """``(ended, lines)``: whether the job's workload has ended (asked of the provider before the lines
    when ``state``, so that the lines of an ended workload are its last), and its output lines."""
    ended = job.status in JOB_FINISHED_STATES
    backend = job.instance.backend if job.instance is not None else None
    if not job.workload_id or backend is None:
        return ended, []
    try:
        driver = get_driver(backend)
        ended = ended or (state and driver.poll_job(workload_id=job.workload_id).finished)
        return ended, driver.job_logs(workload_id=job.workload_id, tail=tail)
    except NotFoundError:
        return True, []  # the provider no longer knows the workload: nothing more will come
    except DriverError as err:
        raise provider_error(backend, err) from err
