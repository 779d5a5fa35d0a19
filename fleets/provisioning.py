"""Fleet provisioning: provision ``nodes.target`` instances at first, keep ``nodes.min``, grow elastic
fleets on demand up to ``nodes.max``, bring instances up through their drivers, notice interruptions,
retire instances idle past ``idle_duration`` (never below ``min``), and keep every instance of a
``placement: cluster`` fleet in the one zone its first instance chose.

Cloud calls never run inside a database transaction: an instance row is created (``pending``,
under the backend lock) before the driver is asked for it, and the driver's answer is recorded with
a compare-and-swap. A worker killed in between leaves a leased row that the next pass picks up.
"""

import logging
from collections.abc import Callable
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from backends.drivers.base import DriverError, Offer, TransientError
from backends.drivers.registry import get_driver
from backends.models import Backend, BackendStatus
from backends.selectors import named
from core.errors import Conflict
from core.events import record_event
from core.kicks import kick
from core.pipeline import Reconciler, Step
from core.specs import MAX_NODES
from core.transitions import compare_and_swap
from fleets.models import FLEET_FINISHED_STATES, Fleet, FleetStatus, Instance, InstanceStatus
from fleets.resources import blocks_needed, mismatch, total_blocks_for
from fleets.selectors import cluster_place
from fleets.services import TERMINATABLE_STATES, create_instance, nodes_target, request_instance_termination

logger = logging.getLogger(__name__)
NO_CAPACITY_MEMORY = timedelta(minutes=5)
NO_CAPACITY_BACKOFF = timedelta(seconds=15)
GROWTH_PER_PASS = 50
LIVE_STATES = TERMINATABLE_STATES


def _event(instance: Instance, kind: str, message: str = "") -> None:
    record_event(project=instance.project_id, resource_type="instance", resource_name=instance.name, kind=kind,
                 message=message)


# --- offers -----------------------------------------------------------------------------------


def _offer_filter_reason(offer: Offer, spec: dict) -> str | None:
    """Why a spec's placement settings (regions, zones, types, spot policy, price) rule an offer out."""
    for key, value in (("regions", offer.region), ("availability_zones", offer.availability_zone),
                       ("instance_types", offer.instance_type)):
        if spec.get(key) and value not in spec[key]:
            return f"{key} excludes {value}"
    policy = spec.get("spot_policy", "on-demand")
    if (policy == "spot" and not offer.spot) or (policy == "on-demand" and offer.spot):
        return "spot policy"
    if spec.get("max_price") is not None and offer.price > spec["max_price"]:
        return "over max_price"
    return None


def _recent_no_capacity(project_id: int, within: timedelta) -> set[tuple[int, str, str]]:
    """(backend, region, zone) places that answered "no capacity" within the last ``within``."""
    since = timezone.now() - within
    return set(Instance.objects.filter(project_id=project_id, termination_reason="no_capacity", updated_at__gte=since)
               .values_list("backend_id", "region", "availability_zone"))


def choose_offers(*, project_id: int, fleet_spec: dict, run_spec: dict | None = None,
                  where: Callable[[int, str, str], bool] | None = None,
                  where_why: str = "where the run's volumes are") -> tuple[list, list[str], bool]:
    """Offers that satisfy the fleet (and the run, if growing for one), cheapest first.

    ``where(backend_id, region, zone)``, if given, says which places the run can use (for example,
    where its volumes are; ``where_why`` says so when no offer is there). Returns
    ``([(backend, offer, total_blocks), ...], reasons, retry)`` where ``reasons`` says why the backends
    gave nothing, and ``retry`` that a backend could not be asked (a transient provider error): nothing
    found may then be found on the next try. Offers in a zone that just ran out of capacity come last,
    after a while in which they are skipped.
    """
    names = fleet_spec.get("backends") or []
    backends = Backend.objects.filter(project_id=project_id)
    if names:
        backends = backends.filter(named(names))
    # A region that just said "no capacity" is skipped for a while (no churn of doomed instances);
    # one that said so in the last minutes is tried last.
    skipped = _recent_no_capacity(project_id, NO_CAPACITY_BACKOFF)
    recent = _recent_no_capacity(project_id, NO_CAPACITY_MEMORY)
    found, reasons, retry = [], [], False
    for backend in backends.order_by("name"):
        if backend.status == BackendStatus.DRAINING:
            reasons.append(f"backend {backend.name} is draining")
            continue
        try:
            offers = get_driver(backend).offers()
        except DriverError as err:
            reasons.append(f"backend {backend.name}: {err}")
            retry = retry or isinstance(err, TransientError)
            continue
        matched = [item for offer in offers if (item := _fit(backend, offer, fleet_spec, run_spec))]
        placed = [item for item in matched
                  if where is None or where(backend.pk, item[1].region, item[1].availability_zone)]
        available = [item for item in placed if _place(backend, item[1]) not in skipped]
        if not matched:
            reasons.append(f"backend {backend.name}: no offer matches the resources")
        elif not placed:
            reasons.append(f"backend {backend.name}: no offer {where_why}")
        elif not available:
            reasons.append(f"backend {backend.name}: no capacity in "
                           f"{', '.join(sorted({item[1].availability_zone for item in placed}))} just now; "
                           f"retrying within {NO_CAPACITY_BACKOFF.seconds} s")
        found.extend(available)
    if not backends.exists():
        reasons.append("no backend matches " + (", ".join(names) if names else "(the project has none)"))
    found.sort(key=lambda item: (_place(item[0], item[1]) in recent, item[1].price))
    return found, reasons, retry


def _place(backend: Backend, offer: Offer) -> tuple[int, str, str]:
    return backend.pk, offer.region, offer.availability_zone


def _fit(backend: Backend, offer: Offer, fleet_spec: dict, run_spec: dict | None):
    if _offer_filter_reason(offer, fleet_spec) or mismatch(offer.resources, fleet_spec["resources"]):
        return None
    total = total_blocks_for(offer.resources, fleet_spec.get("blocks", 1))
    if run_spec is not None:
        if _offer_filter_reason(offer, run_spec):
            return None
        if run_spec.get("nodes", 1) > 1:
            if mismatch(offer.resources, run_spec["resources"]):
                return None
        elif blocks_needed(offer.resources, total, run_spec["resources"])[0] is None:
            return None
    return backend, offer, total


def grow_fleet(*, fleet: Fleet, run_spec: dict | None = None, up_to: int | None = None,
               where: Callable[[int, str, str], bool] | None = None):
    """Add one ``pending`` instance to ``fleet`` (sized for ``run_spec`` if given, in a place
    ``where`` accepts, see ``choose_offers``); ``(instance, why, retry)``: ``retry`` when no instance
    was made because a provider could not be asked just now.

    ``up_to``: only while the fleet has fewer live instances than that, counted under the fleet's row
    lock, so two passes growing one fleet towards ``nodes.min`` stop there together (None, "").
    """
    maximum = fleet.spec["nodes"].get("max")
    limit = maximum if up_to is None else min(up_to, maximum if maximum is not None else up_to)
    if maximum is not None and fleet.instances.filter(status__in=LIVE_STATES).count() >= maximum:
        return None, f"at its maximum of {maximum} instance(s)", False
    cluster = fleet.spec.get("placement") == "cluster"
    where, where_why = _in_cluster_zone(fleet, where) if cluster else (where, "where the run's volumes are")
    offers, reasons, retry = choose_offers(project_id=fleet.project_id, fleet_spec=fleet.spec, run_spec=run_spec,
                                           where=where, where_why=where_why)
    if not offers:
        why = "; ".join(reasons) or "no offer matches"
        return None, f"cluster zone {fleet.cluster_zone}: {why}" if cluster and fleet.cluster_zone else why, retry
    backend, offer, total = offers[0]
    try:
        instance = create_instance(
            fleet=fleet, backend=backend, region=offer.region, availability_zone=offer.availability_zone,
            instance_type=offer.instance_type, resources=offer.resources, price=offer.price, spot=offer.spot,
            total_blocks=total, max_instances=limit,
            cluster_zone=f"{offer.region}/{offer.availability_zone}" if cluster else "",
        )
    except Conflict as err:  # drained, or the cluster zone chosen, since the offers were read: look again
        if err.code == "cluster_zone_chosen":
            fleet.refresh_from_db(fields=["cluster_zone"])
            return None, f"{err.detail}; retrying there", True
        if err.code != "backend_draining":
            raise
        return None, f"backend {backend.name} is draining", False
    if instance is None:
        return None, f"at its maximum of {maximum} instance(s)" if limit == maximum else "", False
    kick("fleets.process_instances")
    return instance, "", False


def _in_cluster_zone(fleet: Fleet, where: Callable[[int, str, str], bool] | None):
    """``(where, where_why)`` for growing a ``placement: cluster`` fleet: once its zone is chosen, only
    that place (backend, region, zone) is accepted, and never another, whatever its capacity."""
    fleet.refresh_from_db(fields=["cluster_zone"])
    pinned = cluster_place(fleet)
    if pinned is None:  # the first instance chooses, among the offers the fleet (and run) accept
        return where, "where the run's volumes are"

    def in_zone(backend_id: int, region: str, zone: str) -> bool:
        return (backend_id, region, zone) == pinned and (where is None or where(backend_id, region, zone))

    why = f"in the fleet's cluster zone {fleet.cluster_zone}"
    return in_zone, why + (" where the run's volumes are" if where is not None else "")


# --- fleets -----------------------------------------------------------------------------------


class FleetReconciler(Reconciler):
    """Live fleets are brought to their wanted number of instances (``desired_instances``), and idle
    surplus instances are retired; a finished fleet's placement group is deleted."""

    model = Fleet
    lease_seconds = 30

    def due(self) -> Q:
        finished_with_group = Q(status__in=FLEET_FINISHED_STATES) & ~Q(placement_group="")
        return Q(status__in=(FleetStatus.SUBMITTED, FleetStatus.ACTIVE)) | finished_with_group

    def call(self, rows):
        # Offers are read while growing, one fleet at a time (see grow_fleet); here only the placement
        # groups of finished fleets are deleted (their instances are all terminated by then).
        results = {}
        for fleet in rows:
            if fleet.status in FLEET_FINISHED_STATES:
                self.keep_lease()
                results[fleet.pk] = _delete_placement_group(fleet)
        return results

    def record(self, fleet, result) -> Step:
        if fleet.status not in FLEET_FINISHED_STATES:
            return Step(changed=bool(_reconcile_fleet(fleet, keep_lease=self.keep_lease)))
        if isinstance(result, DriverError):
            return Step(failed=f"deleting placement group {fleet.placement_group}: {result}")
        Fleet.objects.filter(pk=fleet.pk, status_message__startswith="deleting placement group").update(
            status_message="")  # an earlier attempt's error is over
        if Fleet.objects.filter(pk=fleet.pk, placement_group=fleet.placement_group).update(placement_group=""):
            record_event(project=fleet.project_id, resource_type="fleet", resource_name=fleet.name,
                         kind="placement_group_deleted", message=fleet.placement_group)
        return Step(changed=True)


def _delete_placement_group(fleet: Fleet) -> DriverError | None:
    """Delete a finished fleet's placement group at the backend its cluster is on."""
    pinned = cluster_place(fleet) if fleet.cluster_zone else None
    backend = Backend.objects.filter(pk=pinned[0]).first() if pinned and pinned[0] else None
    if backend is None:
        logger.warning("placement group %s of fleet %s: its backend is gone; nothing to delete it with",
                       fleet.placement_group, fleet.name)
        return None
    try:
        get_driver(backend).delete_placement_group(region=pinned[1], name=fleet.placement_group)
    except DriverError as err:
        return err
    return None


def reconcile_fleets() -> int:
    """One pass over every live fleet."""
    return FleetReconciler().run()


def desired_instances(fleet: Fleet) -> int:
    """How many live instances the fleet keeps by itself: ``nodes.target`` while it is ``submitted``
    (a new fleet, or one whose target a re-apply raised), then ``nodes.min``. Runs grow it beyond,
    up to ``nodes.max``; idle surplus above this number is retired."""
    return nodes_target(fleet.spec) if fleet.status == FleetStatus.SUBMITTED else fleet.spec["nodes"]["min"]


def _reconcile_fleet(fleet: Fleet, keep_lease=lambda: None) -> int:
    live = fleet.instances.filter(status__in=LIVE_STATES).count()
    desired = desired_instances(fleet)
    created, why = 0, ""
    # MAX_NODES bounds a spec stored before nodes had a limit: no pass loops on a user's number;
    # a big fleet grows GROWTH_PER_PASS instances a pass, so one fleet cannot hold a worker long.
    for _ in range(min(GROWTH_PER_PASS, max(0, min(desired, MAX_NODES) - live))):
        keep_lease()  # each growth reads offers from the providers: a long pass keeps its claim
        instance, why, _ = grow_fleet(fleet=fleet, up_to=desired)
        if instance is None:
            break
        created += 1
    message = f"cannot reach {desired} instance(s): {why}" if why else ""
    if message != fleet.status_message:  # always says why the fleet is short, and nothing once it is not
        Fleet.objects.filter(pk=fleet.pk).update(status_message=message)
    if fleet.status == FleetStatus.SUBMITTED and live + created >= desired:
        with transaction.atomic():
            if compare_and_swap(Fleet, pk=fleet.pk, allowed_from=(FleetStatus.SUBMITTED,), to=FleetStatus.ACTIVE,
                                status_message=""):
                record_event(project=fleet.project_id, resource_type="fleet", resource_name=fleet.name,
                             kind="active")
    return created + _retire_idle_instances(fleet, live + created, desired)


def _retire_idle_instances(fleet: Fleet, live: int, desired: int) -> int:
    """Surplus instances idle past their ``idle_duration`` are terminated, longest idle first: an
    instance grown for a run that set one (``Instance.idle_duration``) keeps the run's, the others
    the fleet's (None: off)."""
    surplus = live - desired
    if surplus <= 0:
        return 0
    fleet_idle, now = fleet.spec.get("idle_duration", 300), timezone.now()
    idle = fleet.instances.filter(status=InstanceStatus.IDLE, busy_blocks=0, idle_since__isnull=False)
    retired = 0
    for instance in idle.order_by("idle_since"):
        limit = fleet_idle if instance.idle_duration is None else instance.idle_duration
        if retired < surplus and limit is not None and instance.idle_since < now - timedelta(seconds=limit):
            retired += request_instance_termination(instance=instance, reason="idle_timeout", only_if_idle=True)
    return retired
