"""auto_cleanup_duration: kept on the volume, changed in place, and an unused volume is deleted once it is up."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from core.models import Event
from tests import factories
from volumes import services
from volumes.models import Volume
from volumes.provisioning import process_volumes

pytestmark = pytest.mark.django_db

VOLUME = "type: volume\nname: data-eu\nbackend: sim\nregion: eu-west-1\nsize: 50GB\n"
APPLY = "/api/v1/projects/main/apply/"


def _apply(api, text: str, dry_run: bool = False):
    return api.post(APPLY + ("?dry_run=true" if dry_run else ""), data=text, content_type="application/yaml")


def _active_volume(apply, cleanup: str = "1h") -> Volume:
    apply(VOLUME + f"auto_cleanup_duration: {cleanup}\n")
    process_volumes()
    volume = Volume.objects.get(name="data-eu")
    assert volume.status == "active"
    return volume


def _unused_for(volume: Volume, age: timedelta) -> None:
    Volume.objects.filter(pk=volume.pk).update(updated_at=timezone.now() - age)  # update() skips auto_now


def _instance(project, backend):
    return factories.InstanceFactory(fleet=factories.FleetFactory(project=project), backend=backend)


def _kinds(volume_name: str = "data-eu") -> list[str]:
    return list(Event.objects.filter(resource_type="volume", resource_name=volume_name).order_by("id")
                .values_list("kind", flat=True))


# --- apply -------------------------------------------------------------------------------------


def test_apply_stores_the_cleanup_delay_and_changes_it_in_place(project, sim_backend, api, apply):
    volume = _active_volume(apply, "1h")
    assert volume.auto_cleanup_seconds == 3600 and volume.spec["auto_cleanup_seconds"] == 3600
    assert _apply(api, VOLUME + "auto_cleanup_duration: 3600\n").json()["action"] == "unchanged"

    plan = _apply(api, VOLUME + "auto_cleanup_duration: 30m\n", dry_run=True)
    assert plan.status_code == 200 and plan.json()["action"] == "update"
    assert Volume.objects.get().auto_cleanup_seconds == 3600

    response = _apply(api, VOLUME + "auto_cleanup_duration: 30m\n")
    assert response.status_code == 202
    body = response.json()
    assert body["action"] == "update"
    assert body["changes"] == {"auto_cleanup_seconds": {"old": 3600, "new": 1800}}
    updated = Volume.objects.get()
    assert (updated.pk, updated.volume_id, updated.status) == (volume.pk, volume.volume_id, "active")
    assert updated.auto_cleanup_seconds == 1800 and updated.spec["auto_cleanup_seconds"] == 1800
    event = Event.objects.filter(resource_type="volume", kind="spec_updated").get()
    assert event.message == "auto_cleanup_duration: 1h -> 30m" and event.actor == "alice"

    assert _apply(api, VOLUME + "auto_cleanup_duration: 'off'\n").json()["action"] == "update"
    assert Volume.objects.get().auto_cleanup_seconds is None


def test_other_changes_of_a_live_volume_are_still_refused(project, sim_backend, api, apply):
    _active_volume(apply, "1h")
    response = _apply(api, VOLUME.replace("50GB", "60GB") + "auto_cleanup_duration: 2h\n")
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "volume_exists" and "size_gb" in body["detail"]
    assert set(body["changes"]) == {"size_gb", "auto_cleanup_seconds"}
    volume = Volume.objects.get()
    assert (volume.size_gb, volume.auto_cleanup_seconds) == (50, 3600)
    assert "spec_updated" not in _kinds()


def test_the_volumes_endpoint_stores_the_cleanup_delay_too(project, sim_backend, api):
    doc = {"name": "data-eu", "backend": "sim", "region": "eu-west-1", "size": "50GB", "auto_cleanup_duration": "2h"}
    assert api.post("/api/v1/projects/main/volumes/", doc, format="json").status_code == 202
    assert Volume.objects.get().auto_cleanup_seconds == 7200


# --- cleanup -----------------------------------------------------------------------------------


def test_a_volume_never_attached_is_deleted_once_unused_past_its_duration(project, sim_backend, apply, reconcile):
    volume = _active_volume(apply, "1h")
    _unused_for(volume, timedelta(minutes=59))
    reconcile()
    assert Volume.objects.get().status == "active"

    _unused_for(volume, timedelta(minutes=61))
    reconcile()
    assert Volume.objects.get().status == "deleted"
    assert sim_backend.sim_volumes.get().state == "deleted"  # deleted at the provider, not just forgotten
    assert _kinds() == ["submitted", "active", "auto_cleanup", "deleted"]
    message = Event.objects.get(kind="auto_cleanup").message
    assert message.startswith("unused for 1h1m") and "auto_cleanup_duration 1h" in message


def test_moving_the_clock_deletes_an_unused_volume(project, sim_backend, apply, monkeypatch):
    _active_volume(apply, "30m")
    assert process_volumes() == 0
    later = timezone.now() + timedelta(minutes=31)
    monkeypatch.setattr("django.utils.timezone.now", lambda: later)
    assert process_volumes() == 2  # moved to deleting, then deleted
    assert Volume.objects.get().status == "deleted"


def test_the_idle_time_counts_from_the_latest_detach(project, sim_backend, apply):
    volume = _active_volume(apply, "1h")
    _unused_for(volume, timedelta(days=2))
    instance = _instance(project, sim_backend)
    now = timezone.now()
    volume.attachments.create(instance=instance, status="detached", detached_at=now - timedelta(hours=5))
    latest = volume.attachments.create(instance=instance, status="detached", detached_at=now - timedelta(minutes=10))
    assert process_volumes() == 0
    assert Volume.objects.get().status == "active"

    latest.detached_at = now - timedelta(hours=2)
    latest.save(update_fields=["detached_at"])
    process_volumes()
    assert Volume.objects.get().status == "deleted"
    assert Event.objects.get(kind="auto_cleanup").message.startswith("unused for 2h")


@pytest.mark.parametrize("state", ["attaching", "attached", "detaching", "failed"])
def test_a_volume_with_a_live_attachment_is_kept(project, sim_backend, apply, state):
    volume = _active_volume(apply, "1m")
    _unused_for(volume, timedelta(days=2))
    volume.attachments.create(instance=_instance(project, sim_backend), status=state)
    volume.attachments.update(created_at=timezone.now() - timedelta(days=2))
    assert services.delete_unused_volumes() == 0
    process_volumes()
    assert Volume.objects.get().status == "active"
    assert "auto_cleanup" not in _kinds()


def test_only_active_volumes_stackyard_created_with_a_duration_are_cleaned_up(project, sim_backend):
    old = timezone.now() - timedelta(days=30)
    kept = [
        factories.VolumeFactory(project=project, backend=sim_backend, name="forever", auto_cleanup_seconds=None),
        factories.VolumeFactory(project=project, backend=sim_backend, name="theirs", external=True,
                                auto_cleanup_seconds=60),
        factories.VolumeFactory(project=project, backend=sim_backend, name="broken", status="failed",
                                auto_cleanup_seconds=60),
    ]
    gone = factories.VolumeFactory(project=project, backend=sim_backend, name="scratch", auto_cleanup_seconds=60)
    Volume.objects.update(updated_at=old)
    assert services.delete_unused_volumes() == 1
    assert Volume.objects.get(pk=gone.pk).status == "deleting"
    assert [v.status for v in Volume.objects.filter(pk__in=[v.pk for v in kept]).order_by("name")] == [
        "failed", "active", "active"]
    assert services.delete_unused_volumes() == 0  # a second worker's pass finds nothing: one event only
    assert Event.objects.filter(kind="auto_cleanup").count() == 1


@pytest.mark.parametrize("meanwhile", ["attached", "attached_and_detached", "duration_changed"])
def test_what_happens_between_the_read_and_the_move_wins(project, sim_backend, apply, monkeypatch, meanwhile):
    """A placement that takes the volume after the pass read it (or a re-apply) is re-checked by the
    guarded UPDATE itself: the volume stays, and no event is written."""
    volume = _active_volume(apply, "1h")
    _unused_for(volume, timedelta(days=2))
    instance = _instance(project, sim_backend)
    move = services._delete_unused

    def race(row, now, idle):
        if meanwhile == "attached":
            volume.attachments.create(instance=instance, status="attaching")
        elif meanwhile == "attached_and_detached":
            volume.attachments.create(instance=instance, status="detached", detached_at=timezone.now())
        else:
            Volume.objects.filter(pk=volume.pk).update(auto_cleanup_seconds=7 * 86400)
        return move(row, now, idle)

    monkeypatch.setattr(services, "_delete_unused", race)
    assert services.delete_unused_volumes() == 0
    assert Volume.objects.get().status == "active"
    assert "auto_cleanup" not in _kinds()


# --- against a placement, on PostgreSQL ----------------------------------------------------------


def _idle_volume_and_instance():
    project = factories.ProjectFactory(name="main")
    backend = factories.BackendFactory(project=project, name="sim")
    volume = factories.VolumeFactory(project=project, backend=backend, name="data-eu", auto_cleanup_seconds=60)
    Volume.objects.filter(pk=volume.pk).update(updated_at=timezone.now() - timedelta(days=1))
    return volume, _instance(project, backend)


def _in_thread(target, results: list) -> threading.Thread:
    def run():
        try:
            results.append(target())
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_placement_holding_the_volume_keeps_it():
    volume, instance = _idle_volume_and_instance()
    locked, commit, placed = threading.Event(), threading.Event(), []

    def place():
        with transaction.atomic():
            ok = services.reserve_volumes(job_id=None, instance_id=instance.pk, choices=[("/data", volume)])
            locked.set()
            commit.wait(10)
        return ok

    thread = _in_thread(place, placed)
    assert locked.wait(10)
    assert services.delete_unused_volumes() == 0  # the row is held: this pass leaves it
    commit.set()
    thread.join(10)
    assert placed == [True]
    assert services.delete_unused_volumes() == 0  # now it is attached
    assert Volume.objects.get().status == "active" and volume.attachments.get().status == "attaching"
    assert not Event.objects.filter(kind="auto_cleanup").exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_placement_after_the_move_does_not_take_the_volume(monkeypatch):
    volume, instance = _idle_volume_and_instance()
    moved, commit, placed, cleaned = threading.Event(), threading.Event(), [], []
    record = services._event

    def hold_after_the_move(*args, **kwargs):
        record(*args, **kwargs)
        moved.set()
        commit.wait(10)  # the guarded UPDATE is done, its transaction still open

    monkeypatch.setattr(services, "_event", hold_after_the_move)
    cleaner = _in_thread(services.delete_unused_volumes, cleaned)
    assert moved.wait(10)

    def place():
        with transaction.atomic():
            return services.reserve_volumes(job_id=None, instance_id=instance.pk, choices=[("/data", volume)])

    placer = _in_thread(place, placed)
    placer.join(0.5)
    assert placer.is_alive()  # waiting for the volume's row
    commit.set()
    cleaner.join(10)
    placer.join(10)
    assert cleaned == [1] and placed == [False]
    assert Volume.objects.get().status == "deleting" and not volume.attachments.exists()
