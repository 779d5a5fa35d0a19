"""Writes for fleets and instances: apply, delete, instance creation and termination."""

import uuid

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from backends.models import Backend
from backends.selectors import named
from backends.services import lock_backend_for_new
from core.applying import ApplyResult, spec_changes
from core.errors import Conflict, InvalidInput
from core.events import record_event
from core.kicks import kick
from core.transitions import compare_and_swap
from core.unique import insert_once
from fleets.models import (
    FLEET_FINISHED_STATES,
    INSTANCE_ACTIVE_STATES,
    Fleet,
    FleetStatus,
    Instance,
    InstanceStatus,
)
from fleets.selectors import cluster_place
from projects.models import Project

TERMINATABLE_STATES = (InstanceStatus.PENDING, InstanceStatus.PROVISIONING, InstanceStatus.IDLE, InstanceStatus.BUSY)


def check_backend_references(project: Project, names: list[str] | None, field: str = "backends") -> None:
    """Every entry of a ``backends`` list must name a backend of the project (by name or by type)."""
    if not names:
        return
    known = set()
    for name, type_ in Backend.objects.filter(named(names), project=project).values_list("name", "type"):
        known.update({name, type_})
    missing = [n for n in names if n not in known]
    if missing:
        raise InvalidInput(
            f"{field}: no backend named or of type {', '.join(repr(m) for m in missing)} in project "
            f"'{project.name}'",
            field=field,
        )


def apply_fleet(*, project: Project, spec: dict, actor: str = "", dry_run: bool = False) -> ApplyResult:
    """Create a fleet, update the spec of a live one, or replace a finished one with the same name."""
    check_backend_references(project, spec.get("backends"))
    with transaction.atomic():
        existing = Fleet.objects.select_for_update().filter(project=project, name=spec["name"]).first()
        result = _plan_fleet(existing, spec)
        if dry_run or result.action == "unchanged":
            result.resource = existing
            return result
        if result.action == "update":
            regrow = _raises_target(existing, spec)
            existing.spec = spec
            if regrow:  # back to growing towards the (new) target; see _raises_target
                existing.status = FleetStatus.SUBMITTED
            existing.save(update_fields=["spec", "status", "updated_at"])
            result.resource = existing
            record_event(project=project, resource_type="fleet", resource_name=existing.name, kind="spec_updated",
                         message="changed " + ", ".join(result.changes), actor=actor)
            _kick_fleets()
            return result
        if existing is not None:
            existing.delete()
        with insert_once(Fleet.objects.filter(project=project, name=spec["name"]), f"fleet '{spec['name']}'"):
            result.resource = Fleet.objects.create(project=project, name=spec["name"], spec=spec)
        record_event(project=project, resource_type="fleet", resource_name=spec["name"], kind="submitted", actor=actor)
        _kick_fleets()
        return result


def _kick_fleets() -> None:
    kick("fleets.process_fleets")


def nodes_target(spec: dict) -> int:
    """How many instances a fleet provisions at first (``nodes.target``; ``min`` for a spec stored
    before ``target`` existed)."""
    nodes = spec["nodes"]
    return nodes.get("target", nodes["min"])


def _raises_target(fleet: Fleet, spec: dict) -> bool:
    """A re-apply that changes ``nodes.target`` to more instances than the fleet has makes an active
    fleet ``submitted`` again: it grows to the new target, then keeps ``min`` as before. A lower
    target terminates nothing: surplus instances go only when idle past ``idle_duration``."""
    if fleet.status != FleetStatus.ACTIVE or nodes_target(spec) == nodes_target(fleet.spec):
        return False
    return fleet.instances.filter(status__in=TERMINATABLE_STATES).count() < nodes_target(spec)


def _plan_fleet(existing: Fleet | None, spec: dict) -> ApplyResult:
    plan = ApplyResult(type="fleet", name=spec["name"], action="create", spec=spec)
    if existing is None:
        return plan
    if existing.status in FLEET_FINISHED_STATES:
        _refuse_while_placement_group(existing)
        plan.action = "replace"
        return plan
    if existing.status == FleetStatus.TERMINATING:
        raise Conflict(f"fleet '{existing.name}' is terminating; apply again once it is terminated",
                       code="fleet_terminating")
    plan.changes = spec_changes(existing.spec, spec)
    plan.action = "update" if plan.changes else "unchanged"
    return plan


@transaction.atomic
def delete_fleet(*, fleet: Fleet, actor: str = "") -> Fleet:
    """Terminate a live fleet (its instances first), or forget a finished one."""
    fleet = Fleet.objects.select_for_update().get(pk=fleet.pk)
    if fleet.status in FLEET_FINISHED_STATES:
        _refuse_while_placement_group(fleet)
        record_event(project=fleet.project_id, resource_type="fleet", resource_name=fleet.name, kind="deleted",
                     actor=actor)
        fleet.delete()
        return fleet
    if compare_and_swap(Fleet, pk=fleet.pk, allowed_from=(FleetStatus.SUBMITTED, FleetStatus.ACTIVE),
                        to=FleetStatus.TERMINATING, status_message="deleted by user"):
        record_event(project=fleet.project_id, resource_type="fleet", resource_name=fleet.name, kind="terminating",
                     actor=actor)
    for instance in fleet.instances.filter(status__in=TERMINATABLE_STATES):
        request_instance_termination(instance=instance, reason="fleet_deleted", actor=actor)
    finish_fleet_if_empty(fleet_id=fleet.pk)
    fleet.refresh_from_db()
    return fleet


def _refuse_while_placement_group(fleet: Fleet) -> None:
    """A finished fleet's row is kept until its placement group is deleted (the fleet reconciler does
    it once the instances are gone): the row is the only record of the group to delete."""
    if fleet.placement_group:
        raise Conflict(f"fleet '{fleet.name}' is terminated but its placement group {fleet.placement_group} is "
                       f"still being deleted; try again shortly", code="fleet_terminating")


def finish_fleet_if_empty(*, fleet_id: int) -> bool:
    """A terminating fleet becomes terminated once none of its instances is active."""
    if Instance.objects.filter(fleet_id=fleet_id, status__in=INSTANCE_ACTIVE_STATES).exists():
        return False
    fleet = Fleet.objects.get(pk=fleet_id)
    if compare_and_swap(Fleet, pk=fleet_id, allowed_from=(FleetStatus.TERMINATING,), to=FleetStatus.TERMINATED):
        record_event(project=fleet.project_id, resource_type="fleet", resource_name=fleet.name, kind="terminated")
        return True
    return False


@transaction.atomic
def create_instance(
    *, fleet: Fleet, backend: Backend, region: str, availability_zone: str = "", instance_type: str = "",
    resources: dict | None = None, price: float = 0, spot: bool = False, total_blocks: int = 1, actor: str = "",
    max_instances: int | None = None, cluster_zone: str = "",
) -> Instance | None:
    """Record a new ``pending`` instance of ``fleet`` on ``backend``, named ``{fleet}-{n}``.

    Takes the backend's row lock first, so it cannot race a backend deletion or drain (409
    ``backend_draining``), then the fleet's, so concurrent growth never exceeds ``max_instances``
    live instances (None is returned then).

    ``cluster_zone`` (``"region/zone"``, for ``placement: cluster`` fleets): the first instance records
    it on the fleet; an instance for another zone than the one recorded is refused (409
    ``cluster_zone_chosen``: two growers raced and the other one chose first).
    """
    backend = lock_backend_for_new(backend.pk)
    if backend.project_id != fleet.project_id:
        raise InvalidInput("the backend belongs to another project", field="backend")
    fleet = Fleet.objects.select_for_update().get(pk=fleet.pk)
    if max_instances is not None and fleet.instances.filter(status__in=TERMINATABLE_STATES).count() >= max_instances:
        return None
    pinned = cluster_place(fleet) if cluster_zone else None
    if pinned is not None and (pinned[1] + "/" + pinned[2] != cluster_zone or pinned[0] != backend.pk):
        raise Conflict(f"fleet '{fleet.name}' is in cluster zone {fleet.cluster_zone}", code="cluster_zone_chosen")
    if cluster_zone and not fleet.cluster_zone:
        Fleet.objects.filter(pk=fleet.pk).update(cluster_zone=cluster_zone)
        record_event(project=fleet.project_id, resource_type="fleet", resource_name=fleet.name,
                     kind="cluster_zone_chosen", message=f"every instance goes to {cluster_zone}", actor=actor)
    num = (fleet.instances.aggregate(n=Max("instance_num"))["n"] + 1) if fleet.instances.exists() else 0
    instance = Instance.objects.create(
        project_id=fleet.project_id, fleet=fleet, backend=backend, name=f"{fleet.name}-{num}", instance_num=num,
        region=region, availability_zone=availability_zone, instance_type=instance_type, resources=resources or {},
        price=price, spot=spot, total_blocks=total_blocks, client_token=f"stackyard-{uuid.uuid4().hex}",
    )
    record_event(project=fleet.project_id, resource_type="instance", resource_name=instance.name, kind="pending",
                 message=f"{instance_type} in {region} on backend {backend.name}", actor=actor)
    return instance


def request_instance_termination(*, instance: Instance, reason: str, actor: str = "",
                                 only_if_idle: bool = False) -> bool:
    """Move an instance to ``terminating``; the termination loop finishes the job once nothing holds it.

    ``only_if_idle``: only an ``idle`` instance with no busy block moves. The guarded update and
    block taking (``fleets.blocks.take_blocks``) serialize on the row, so an instance that has just
    been given a job is never retired as idle.
    """
    with transaction.atomic():
        if only_if_idle:
            moved = Instance.objects.filter(pk=instance.pk, status=InstanceStatus.IDLE, busy_blocks=0).update(
                status=InstanceStatus.TERMINATING, termination_reason=reason, updated_at=timezone.now()) == 1
        else:
            moved = compare_and_swap(Instance, pk=instance.pk, allowed_from=TERMINATABLE_STATES,
                                     to=InstanceStatus.TERMINATING, termination_reason=reason)
        if moved:
            record_event(project=instance.project_id, resource_type="instance", resource_name=instance.name,
                         kind="terminating", message=reason, actor=actor)
            kick("fleets.terminate_instances")
    return moved


def active_instance_names(backend: Backend) -> list[str]:
    """The instances that keep ``backend`` in use (registered with ``backends.dependents``)."""
    return list(backend.instances.filter(status__in=INSTANCE_ACTIVE_STATES).order_by("name")
                .values_list("name", flat=True))


def terminate_backend_instances(*, backend: Backend, actor: str = "") -> list[str]:
    """Mark every active instance of ``backend`` for termination; return their names."""
    names = []
    for instance in backend.instances.exclude(status=InstanceStatus.TERMINATED).order_by("name"):
        request_instance_termination(instance=instance, reason="terminated_by_operator", actor=actor)
        names.append(instance.name)
    return names
