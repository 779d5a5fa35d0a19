"""Orphans: provider resources tagged as ours (``stackyard-managed=true``) that no live row owns.

A scan of one backend (``scan_backend``, run for every backend by ``find_orphans`` on beat):

1. lists the provider's tagged resources, in one driver call outside any transaction;
2. then asks the apps above which of them a row owns (``backends.dependents.owned_provider_ids``).
   The order matters: a row that records its provider id while the list call runs is read as the
   owner, and so is a row whose create is in flight (a live row with no provider id yet, named by
   the resource's tags), so a VM being created is never mistaken for an orphan;
3. records each orphan (one ``Orphan`` row per resource; ``orphan_found`` is written once, when it
   is first seen), marks resolved the orphans no longer seen orphaned (owned now, or gone), and,
   only when the backend config says ``terminate_orphans: true``, terminates (deletes, for volumes)
   the orphans first seen more than ``orphan_grace`` ago, writing ``orphan_terminated``.

Only resources tagged with the backend's own project are judged: a provider account shared by
several projects (or installations) holds their resources too, and those are theirs to judge.

Scans are level-triggered and safe to run concurrently: the orphan row is unique per backend and
resource (the insert that loses writes no event), a scan resolves only orphans no later-started
scan has seen, terminating twice is a no-op at the provider, and the event is written by the one
compare-and-swap that wins.
"""

import datetime
import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from backends.dependents import owned_provider_ids
from backends.drivers.base import TAG_PROJECT, DriverError, NotFoundError, TaggedResource, TransientError
from backends.drivers.orphan_policy import orphan_policy
from backends.drivers.registry import get_driver, supported_types
from backends.models import Backend, Orphan, OrphanKind, OrphanStatus
from core.errors import Conflict, ServiceError
from core.events import record_event

logger = logging.getLogger(__name__)
OPEN_STATES = (OrphanStatus.FOUND, OrphanStatus.TERMINATED)


class ProviderError(ServiceError):
    """The provider could not answer (502): a driver error met while serving a request."""

    status_code = 502
    default_code = "provider_error"


class ProviderUnavailable(ProviderError):
    """The provider failed transiently (throttled, timed out): retry later (503)."""

    status_code = 503


def provider_error(backend: Backend, err: DriverError) -> ProviderError:
    error_class = ProviderUnavailable if isinstance(err, TransientError) else ProviderError
    return error_class(f"the provider of backend '{backend.name}' failed: {err}")


# --- reads ------------------------------------------------------------------------------------------


def orphaned(backend: Backend, resources: list[TaggedResource]) -> list[TaggedResource]:
    """The resources of this backend's project that no row owns. Call it after listing ``resources``."""
    mine = [r for r in resources if r.tags.get(TAG_PROJECT) == backend.project.name]
    owned = owned_provider_ids(mine)
    return [r for r in mine if r.provider_id not in owned]


def tagged_resources(*, backend: Backend) -> list[dict]:
    """The provider's tagged resources, each with ``orphan`` (a live call; ``ProviderError`` if it fails)."""
    try:
        resources = get_driver(backend).list_tagged_resources()
    except DriverError as err:
        raise provider_error(backend, err) from None
    orphan_ids = {r.provider_id for r in orphaned(backend, resources)}
    return [{"kind": r.kind, "provider_id": r.provider_id, "region": r.region,
             "availability_zone": r.availability_zone, "name": r.name, "orphan": r.provider_id in orphan_ids,
             "created_at": r.created_at} for r in resources]


# --- the scan ---------------------------------------------------------------------------------------


def find_orphans() -> int:
    """Scan every backend whose type has a driver; return how many orphans the scans saw.

    A backend whose provider fails is logged and skipped: the next pass scans it again.
    """
    seen = 0
    for backend in Backend.objects.filter(type__in=supported_types()).select_related("project").order_by("pk"):
        try:
            seen += scan_backend(backend=backend)
        except DriverError as err:
            logger.warning("orphan scan of backend %s (project %s) failed: %s", backend.name, backend.project.name,
                           err)
    return seen


def scan_backend(*, backend: Backend) -> int:
    """Find, record, resolve and (if the config says so) terminate the backend's orphans; return how
    many orphans it saw. Raises ``DriverError`` if the provider cannot be listed (nothing changed)."""
    driver = get_driver(backend)
    listed_at = timezone.now()
    resources = driver.list_tagged_resources()
    orphans = orphaned(backend, resources)
    for resource in orphans:
        _record_found(backend, resource, listed_at)
    _resolve(backend, orphans, resources, listed_at)
    policy = orphan_policy(driver.config)
    if policy.terminate:
        due_before = listed_at - datetime.timedelta(seconds=policy.grace_seconds)
        for orphan in _due(backend, orphans, due_before):
            try:
                _terminate(orphan, driver)
            except DriverError as err:
                Orphan.objects.filter(pk=orphan.pk).update(status_message=f"termination failed, retrying: {err}")
    return len(orphans)


def _described(resource) -> dict:
    return {"kind": resource.kind, "name": resource.name, "region": resource.region,
            "availability_zone": resource.availability_zone, "tags": dict(resource.tags),
            "provider_created_at": resource.created_at}


def _found_event(backend: Backend, orphan) -> None:
    where = "/".join(p for p in (orphan.region, orphan.availability_zone) if p) or "unknown region"
    record_event(project=backend.project_id, resource_type="backend", resource_name=backend.name,
                 kind="orphan_found", message=f"{orphan.kind} {orphan.provider_id} ({orphan.name or 'no name'}) in "
                                              f"{where} is tagged as ours but no {orphan.kind} owns it")


def _record_found(backend: Backend, resource: TaggedResource, seen_at: datetime.datetime) -> None:
    """Note that ``resource`` is orphaned now; the event only when it was not already known as one."""
    existing = Orphan.objects.filter(backend=backend, provider_id=resource.provider_id).first()
    if existing is None:
        try:
            with transaction.atomic():
                orphan = Orphan.objects.create(backend=backend, provider_id=resource.provider_id,
                                               first_seen_at=seen_at, last_seen_at=seen_at, **_described(resource))
                _found_event(backend, orphan)
        except IntegrityError:
            pass  # a concurrent scan recorded it first, and wrote the event
        return
    if existing.status == OrphanStatus.RESOLVED:  # owned or gone for a while, orphaned again: a new finding
        with transaction.atomic():
            if Orphan.objects.filter(pk=existing.pk, status=OrphanStatus.RESOLVED).update(
                    status=OrphanStatus.FOUND, first_seen_at=seen_at, last_seen_at=seen_at, resolved_at=None,
                    terminated_at=None, status_message="", **_described(resource)):
                _found_event(backend, existing)
        return
    Orphan.objects.filter(pk=existing.pk, last_seen_at__lt=seen_at).update(last_seen_at=seen_at)


def _resolve(backend: Backend, orphans: list, resources: list, listed_at: datetime.datetime) -> None:
    """Found orphans this scan did not see orphaned are resolved: a row owns them now, or they are gone.

    Only those last seen before this scan's listing: a scan that listed later and saw one orphaned
    knows better than this one.
    """
    still = {r.provider_id for r in orphans}
    listed = {r.provider_id for r in resources}
    stale = (Orphan.objects.filter(backend=backend, status=OrphanStatus.FOUND, last_seen_at__lt=listed_at)
             .exclude(provider_id__in=still))
    for orphan in stale:
        why = "a row owns it now" if orphan.provider_id in listed else "it is gone from the provider"
        with transaction.atomic():
            if Orphan.objects.filter(pk=orphan.pk, status=OrphanStatus.FOUND, last_seen_at__lt=listed_at).update(
                    status=OrphanStatus.RESOLVED, resolved_at=timezone.now(), status_message=f"resolved: {why}"):
                record_event(project=backend.project_id, resource_type="backend", resource_name=backend.name,
                             kind="orphan_resolved", message=f"{orphan.kind} {orphan.provider_id}: {why}")


def _due(backend: Backend, orphans: list, due_before: datetime.datetime) -> list[Orphan]:
    """Orphans seen in this scan and orphaned longer than the grace; terminated ones that are still
    there a grace after their termination are terminated again (no second event)."""
    ids = [r.provider_id for r in orphans]
    rows = (Orphan.objects.filter(backend=backend, provider_id__in=ids, status__in=OPEN_STATES)
            .select_related("backend").order_by("pk"))
    return [o for o in rows if (o.terminated_at if o.status == OrphanStatus.TERMINATED else o.first_seen_at)
            <= due_before]


def _terminate(orphan: Orphan, driver, *, actor: str = "", why: str = "") -> bool:
    """Terminate (or delete) the resource at its provider, then record it; True if this call moved the
    orphan to ``terminated``. ``DriverError`` if the provider refused (nothing recorded)."""
    try:
        if orphan.kind == OrphanKind.VOLUME:
            driver.delete_volume(volume_id=orphan.provider_id)
        else:
            driver.terminate_instance(instance_id=orphan.provider_id)
    except NotFoundError:
        pass  # already gone: what we wanted
    verb = "deleted" if orphan.kind == OrphanKind.VOLUME else "terminated"
    why = why or f"orphaned since {orphan.first_seen_at:%Y-%m-%d %H:%M:%S} UTC, past the orphan_grace"
    with transaction.atomic():
        moved = Orphan.objects.filter(pk=orphan.pk, status=OrphanStatus.FOUND).update(
            status=OrphanStatus.TERMINATED, terminated_at=timezone.now(), status_message=f"{verb}: {why}")
        if moved:
            record_event(project=orphan.backend.project_id, resource_type="backend", resource_name=orphan.backend.name,
                         kind="orphan_terminated", message=f"{orphan.kind} {orphan.provider_id} "
                                                           f"({orphan.name or 'no name'}) {verb}: {why}", actor=actor)
        else:  # terminated again (it was still there), or resolved meanwhile: just note when
            Orphan.objects.filter(pk=orphan.pk, status=OrphanStatus.TERMINATED).update(terminated_at=timezone.now())
    return bool(moved)


# --- operator actions -------------------------------------------------------------------------------


def terminate_orphan(*, orphan: Orphan, actor: str = "") -> str:
    """Terminate a found orphan now, whatever the grace and ``terminate_orphans`` say (an operator's
    decision). Refused (409) if it is not ``found`` or if a row owns it by now."""
    if orphan.status != OrphanStatus.FOUND:
        raise Conflict(f"orphan {orphan.provider_id} is {orphan.status}, not found", code="invalid_state")
    resource = TaggedResource(orphan.kind, orphan.provider_id, orphan.name, orphan.region, orphan.availability_zone,
                              orphan.provider_created_at, dict(orphan.tags))
    if owned_provider_ids([resource]):
        raise Conflict(f"{orphan.kind} {orphan.provider_id} is owned by a row now; not terminated",
                       code="not_an_orphan")
    try:
        _terminate(orphan, get_driver(orphan.backend), actor=actor, why=f"by {actor or 'an operator'}")
    except DriverError as err:
        raise provider_error(orphan.backend, err) from None
    return f"{orphan.kind} {orphan.provider_id} terminated"
