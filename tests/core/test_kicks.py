"""On-commit kicks: a burst of commits enqueues one pass per task, and a started pass re-arms it."""

from unittest import mock

import pytest
from django.db import transaction

from core import kicks
from core.kicks import _pass_started, kick
from core.models import QueuedKick
from runs.tasks import place_jobs


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_commits_enqueues_one_pass_until_it_starts():
    with mock.patch.object(place_jobs, "apply_async") as send:
        for _ in range(5):
            with transaction.atomic():
                kick("runs.place_jobs")
        assert send.call_count == 1
        assert QueuedKick.objects.filter(task_name="runs.place_jobs").exists()
        _pass_started(sender=place_jobs)  # the worker starts the pass (task_prerun)
        with transaction.atomic():
            kick("runs.place_jobs")
        assert send.call_count == 2


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_change_kicks_nothing_and_a_broker_failure_never_fails_the_request():
    with mock.patch.object(place_jobs, "apply_async") as send:
        with pytest.raises(RuntimeError), transaction.atomic():
            kick("runs.place_jobs")
            raise RuntimeError("the change failed")
        assert send.call_count == 0
    with mock.patch.object(place_jobs, "apply_async", side_effect=ConnectionError("broker down")):
        with transaction.atomic():
            kick("runs.place_jobs")
    assert not QueuedKick.objects.exists()  # a failed send does not hold later kicks back


@pytest.mark.django_db(transaction=True)
def test_after_a_broker_failure_kicks_are_skipped_for_a_while_not_waited_on():
    with mock.patch.object(place_jobs, "apply_async", side_effect=ConnectionError("broker down")) as send:
        for _ in range(5):
            with transaction.atomic():
                kick("runs.place_jobs")
    assert send.call_count == 1  # one request waited on the broker; the next ones return at once
    kicks.BROKER_DOWN_SECONDS = 0.1
    kicks._broker_down_until = 0.0
    with mock.patch.object(place_jobs, "apply_async") as send:
        with transaction.atomic():
            kick("runs.place_jobs")
        assert send.call_count == 1  # the broker is tried again once the pause is over


def test_a_web_process_that_never_imported_a_tasks_module_finds_the_task_it_kicks():
    # The web imports no tasks module (a kick names its task) and Celery discovers tasks lazily: before
    # this was fixed every kick from the API failed ("never registered") and waited for beat. Threads
    # kick at once, as under a threaded server: none may see a half-filled registry.
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = """
import django, threading
django.setup()
from core.kicks import _registered_task
found = []
threads = [threading.Thread(target=lambda: found.append(_registered_task("runs.place_jobs").name)) for _ in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
print(len(found), set(found))
"""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "8 {'runs.place_jobs'}", out.stderr[-2000:]


@pytest.mark.django_db(transaction=True)
def test_a_stale_queued_kick_from_a_lost_message_no_longer_holds_kicks_back():
    from datetime import timedelta

    from django.utils import timezone

    QueuedKick.objects.create(task_name="runs.place_jobs", queued_at=timezone.now() - timedelta(minutes=1))
    with mock.patch.object(place_jobs, "apply_async") as send:
        with transaction.atomic():
            kick("runs.place_jobs")
        with transaction.atomic():
            kick("runs.place_jobs")
    assert send.call_count == 1
    assert QueuedKick.objects.get().queued_at > timezone.now() - timedelta(seconds=5)
