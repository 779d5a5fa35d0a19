"""On-commit kicks: a burst of commits enqueues one pass per task, and a started pass re-arms it."""

from unittest import mock

import pytest
from django.db import transaction

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
