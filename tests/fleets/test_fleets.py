"""Fleets through the API: applied, listed with their instances, deleted (terminated)."""

import pytest

from fleets.instances import process_terminating_instances
from fleets.models import Fleet, Instance
from fleets.services import create_instance
from tests import factories

pytestmark = pytest.mark.django_db

FLEETS = "/api/v1/projects/main/fleets/"


def test_fleet_create_and_delete_without_instances(project, sim_backend, api):
    response = api.post(FLEETS, {"name": "gpu8", "nodes": 1, "resources": {"gpu": "H100:8"}, "blocks": 8},
                        format="json")
    assert response.status_code == 202 and response.json()["status"] == "submitted"
    assert api.delete(FLEETS + "gpu8/").json()["status"] == "terminated"
    assert api.delete(FLEETS + "gpu8/").status_code == 204  # a finished fleet is forgotten
    assert not Fleet.objects.exists()


def test_deleting_a_fleet_terminates_its_instances_first(project, sim_backend, api):
    fleet = factories.FleetFactory(project=project, name="gpu8")
    instance = create_instance(fleet=fleet, backend=sim_backend, region="eu-west-1", total_blocks=8)
    Instance.objects.filter(pk=instance.pk).update(status="idle")
    assert instance.name == "gpu8-0"
    assert api.delete(FLEETS + "gpu8/").json()["status"] == "terminating"
    assert process_terminating_instances() == 1
    assert api.get(FLEETS + "gpu8/").json()["status"] == "terminated"
    body = api.get("/api/v1/projects/main/instances/gpu8-0/").json()
    assert body["status"] == "terminated" and body["termination_reason"] == "fleet_deleted"


def test_instance_shows_blocks(project, sim_backend, api):
    fleet = factories.FleetFactory(project=project, name="gpu8")
    factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0, total_blocks=8, busy_blocks=6,
                              status="busy")
    body = api.get("/api/v1/projects/main/instances/gpu8-0/").json()
    assert (body["total_blocks"], body["busy_blocks"], body["idle_blocks"], body["blocks"]) == (8, 6, 2, "6/8 busy")
    assert api.get(FLEETS + "gpu8/").json()["instances"] == ["gpu8-0"]


def test_busy_blocks_bounds_are_database_constraints(project, sim_backend):
    from django.db import IntegrityError, transaction
    from django.db.models import F

    instance = factories.InstanceFactory(fleet=factories.FleetFactory(project=project), backend=sim_backend,
                                         total_blocks=2, busy_blocks=2)
    with pytest.raises(IntegrityError), transaction.atomic():
        Instance.objects.filter(pk=instance.pk).update(busy_blocks=F("busy_blocks") + 1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Instance.objects.filter(pk=instance.pk).update(total_blocks=0, busy_blocks=0)
