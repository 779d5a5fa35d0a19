"""Concurrent creates of one new name on PostgreSQL: one wins, the others get 200 or 409, never a 500."""

import threading
from collections import Counter

import pytest
from django.db import connection

from backends.models import Backend
from fleets.models import Fleet
from projects.models import Project
from runs.models import Run
from tests import factories
from tests.conftest import client_for
from volumes.models import Volume

THREADS = 8
ROUNDS = 4
APPLY = "/api/v1/projects/main/apply/"


def _race(user, request) -> list[tuple[int, str]]:
    """Send ``request(client, thread_number)`` from THREADS threads at once; their (status, code)."""
    clients = [client_for(user) for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS)
    answers = [None] * THREADS

    def send(n: int) -> None:
        try:
            barrier.wait()
            response = request(clients[n], n)
            answers[n] = (response.status_code, response.json().get("code", "") if response.content else "")
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            answers[n] = (0, repr(err))
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def _yaml(client, text):
    return client.post(APPLY, data=text, content_type="application/yaml")


KINDS = {
    # kind: (the request each thread sends for a new name, the model, the created status)
    "project": (lambda c, n, name: c.post("/api/v1/projects/", {"name": name}, format="json"), Project, 201),
    "backend": (lambda c, n, name: c.post("/api/v1/projects/main/backends/", {"name": name, "type": "sim"},
                                          format="json"), Backend, 201),
    "fleet": (lambda c, n, name: _yaml(c, f"type: fleet\nname: {name}\nnodes: 0..1\n"), Fleet, 202),
    "run": (lambda c, n, name: _yaml(c, f"type: task\nname: {name}\ncommands: [x]\n"), Run, 202),
    # Threads alternate between two backends, so they do not all queue on one backend lock.
    "volume": (lambda c, n, name: _yaml(c, f"type: volume\nname: {name}\nbackend: {('sim', 'sim2')[n % 2]}\n"
                                           "region: eu-west-1\nsize: 10GB\n"), Volume, 202),
}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", list(KINDS))
def test_concurrent_creates_of_one_name_never_give_a_500(kind):
    project = factories.ProjectFactory(name="main")
    user = factories.UserFactory(username="alice")
    factories.MembershipFactory(project=project, user=user, role="admin")
    factories.BackendFactory(project=project, name="sim")
    factories.BackendFactory(project=project, name="sim2")
    request, model, created = KINDS[kind]
    seen = Counter()
    for round_num in range(ROUNDS):
        name = f"new-{kind}-{round_num}"
        answers = _race(user, lambda client, n, name=name: request(client, n, name))
        seen.update(answers)
        assert all(status in (200, created, 409) for status, _ in answers), answers
        assert [status for status, _ in answers].count(created) == 1, answers
        assert model.objects.filter(name=name).count() == 1
    assert not [answer for answer in seen if answer[0] >= 500], seen
