"""Deleting a backend races instance creation on PostgreSQL: no instance is ever left on it."""

import threading

import pytest
from django.db import connection

from backends.models import Backend
from backends.services import delete_backend
from core.errors import Conflict, NotFound
from fleets.models import Instance
from fleets.services import create_instance
from tests import factories

CREATORS = 4
ROUNDS = 15


def _run_round(project, round_num: int) -> tuple[bool, int]:
    backend = factories.BackendFactory(project=project, name=f"race-{round_num}")
    fleet = factories.FleetFactory(project=project, name=f"fleet-{round_num}")
    barrier = threading.Barrier(CREATORS + 1)
    outcome = {"deleted": False, "created": 0, "errors": []}
    lock = threading.Lock()

    def creator():
        try:
            barrier.wait()
            create_instance(fleet=fleet, backend=backend, region="eu-west-1", total_blocks=1)
            with lock:
                outcome["created"] += 1
        except Conflict as err:
            assert err.code == "backend_deleted"
        except Exception as err:  # noqa: BLE001 - surfaced by the assertion below
            outcome["errors"].append(repr(err))
        finally:
            connection.close()

    def deleter():
        try:
            barrier.wait()
            delete_backend(backend=backend)
            outcome["deleted"] = True
        except Conflict as err:
            assert err.code == "backend_in_use"
        except (NotFound, Exception) as err:  # noqa: BLE001
            outcome["errors"].append(repr(err))
        finally:
            connection.close()

    threads = [threading.Thread(target=creator) for _ in range(CREATORS)] + [threading.Thread(target=deleter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not outcome["errors"], outcome["errors"]
    return outcome["deleted"], outcome["created"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_delete_backend_races_instance_creation():
    project = factories.ProjectFactory(name="race")
    outcomes = [_run_round(project, n) for n in range(ROUNDS)]
    for n, (deleted, created) in enumerate(outcomes):
        if deleted:
            assert created == 0, "an instance was created on a backend that was then deleted"
            assert not Instance.objects.filter(fleet__name=f"fleet-{n}").exists(), "instance left on a deleted backend"
        else:
            assert created > 0 and Backend.objects.filter(name=f"race-{n}").exists()
    # Every instance that exists points at a backend that exists.
    assert not Instance.objects.filter(backend__isnull=True).exists()
    # Both outcomes happened, so the race was real.
    assert {deleted for deleted, _ in outcomes} == {True, False}, outcomes
