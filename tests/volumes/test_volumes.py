"""Volumes: provisioned and deleted through the sim driver; in-use volumes are protected."""

import pytest

from backends.drivers import sim_faults
from core.models import Event
from tests import factories
from volumes.models import Volume
from volumes.provisioning import process_volumes

pytestmark = pytest.mark.django_db

VOLUMES = "/api/v1/projects/main/volumes/"


def _create(api, **extra):
    doc = {"name": "data-eu", "backend": "sim", "region": "eu-west-1", "size": "50GB", **extra}
    response = api.post(VOLUMES, doc, format="json")
    assert response.status_code == 202, response.content
    return Volume.objects.get(name="data-eu")


def test_volume_is_provisioned_then_deleted_after_the_provider_confirms(project, sim_backend, api):
    volume = _create(api)
    assert volume.status == "submitted"
    assert process_volumes() == 1
    body = api.get(VOLUMES + "data-eu/").json()
    assert body["status"] == "active" and body["volume_id"] and body["size_gb"] == 50
    assert api.delete(VOLUMES + "data-eu/").json()["status"] == "deleting"
    assert sim_backend.sim_volumes.get().state != "deleted"
    process_volumes()
    assert api.get(VOLUMES + "data-eu/").json()["status"] == "deleted"
    assert sim_backend.sim_volumes.get().state == "deleted"
    kinds = list(Event.objects.filter(resource_type="volume").order_by("id").values_list("kind", flat=True))
    assert kinds == ["submitted", "active", "deleting", "deleted"]


def test_provider_errors_are_retried_and_visible(project, sim_backend, api):
    _create(api)
    sim_faults.add_fault(sim_backend, {"kind": "api_errors", "rate": 1})
    assert process_volumes() == 0
    body = api.get(VOLUMES + "data-eu/").json()
    assert body["status"] == "provisioning" and "retrying" in body["status_message"]
    assert process_volumes() == 0  # backing off: not even asked again yet
    sim_faults.clear_faults(sim_backend)
    Volume.objects.update(lease_until=None)  # the backoff is over
    assert process_volumes() == 1
    assert api.get(VOLUMES + "data-eu/").json()["status"] == "active"


def test_unknown_external_volume_fails_visibly(project, sim_backend, api):
    api.post(VOLUMES, {"name": "ext", "backend": "sim", "region": "eu-west-1", "volume_id": "vol-missing"},
             format="json")
    process_volumes()
    body = api.get(VOLUMES + "ext/").json()
    assert body["status"] == "failed" and body["status_message"]


def test_attached_volume_cannot_be_deleted_and_can_be_force_detached(project, sim_backend, api):
    volume = factories.VolumeFactory(project=project, backend=sim_backend, name="data")
    assert api.post(VOLUMES + "data/force-detach/").status_code == 409
    instance = factories.InstanceFactory(fleet=factories.FleetFactory(project=project), backend=sim_backend)
    volume.attachments.create(instance=instance, status="attached")
    response = api.delete(VOLUMES + "data/")
    assert response.status_code == 409
    assert response.json()["code"] == "volume_in_use" and response.json()["instance"] == instance.name
    detach = api.post(VOLUMES + "data/force-detach/")
    assert detach.status_code == 202
    assert detach.json()["status"] == "detaching" and detach.json()["force"] is True
    volume.refresh_from_db()
    assert volume.status == "active"


def test_one_live_attachment_per_volume_is_a_database_constraint(project, sim_backend):
    from django.db import IntegrityError, transaction

    volume = factories.VolumeFactory(project=project, backend=sim_backend)
    fleet = factories.FleetFactory(project=project)
    a = factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0)
    b = factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=1)
    volume.attachments.create(instance=a, status="detached")
    volume.attachments.create(instance=a, status="attached")
    with pytest.raises(IntegrityError), transaction.atomic():
        volume.attachments.create(instance=b, status="attaching")
