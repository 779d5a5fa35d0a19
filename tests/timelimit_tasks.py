"""Tasks for ``tests/test_worker_time_limits.py`` only; a worker loads them with ``--include``.

``tests.stuck`` ignores its soft time limit, as code stuck in a C call or swallowing every
exception would, so only the hard limit can free its pool slot. Both tasks write what they did
into the folder they are given, for the test process to read.
"""

import os
import time
from pathlib import Path

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

STUCK_TIME_LIMIT = 3


@shared_task(name="tests.stuck", acks_late=True, time_limit=STUCK_TIME_LIMIT, soft_time_limit=1)
def stuck(folder: str) -> None:
    Path(folder, f"stuck-started-{os.getpid()}-{time.time():.3f}").touch()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except SoftTimeLimitExceeded:
            Path(folder, "stuck-soft-limit").touch()


@shared_task(name="tests.next", acks_late=True, time_limit=30, soft_time_limit=20)
def next_task(folder: str) -> None:
    Path(folder, "next-done").write_text(f"{os.getpid()} {time.time():.3f}")
