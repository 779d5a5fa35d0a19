"""Fleet provisioning: keep ``nodes.min`` instances, grow elastic fleets on demand, bring instances up
through their drivers, notice interruptions, and retire instances idle past ``idle_duration``.

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
from fleets.models import Fleet, FleetStatus, Instance, InstanceStatus
from fleets.resources import blocks_needed, mismatch, total_blocks_for
from fleets.services import TERMINATABLE_STATES, create_instance, request_instance_termination

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
                  where: Callable[[int, str, str], bool] | None = None) -> tuple[list, list[str], bool]:
    """Offers that satisfy the fleet (and the run, if growing for one), cheapest first.

    ``where(backend_id, region, zone)``, if given, says which places the run can use (for example,
    where its volumes are). Returns ``([(backend, offer, total_blocks), ...], reasons, retry)`` where
    ``reasons`` says why the backends gave nothing, and ``retry`` that a backend could not be asked
    (a transient provider error): nothing found may then be found on the next try. Offers in a zone
    that just ran out of capacity come last, after a while in which they are skipped.
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
            reasons.append(f"backend {backend.name}: no offer where the run's volumes are")
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
    offers, reasons, retry = choose_offers(project_id=fleet.project_id, fleet_spec=fleet.spec, run_spec=run_spec,
                                    where=where)
    if not offers:
        return None, "; ".join(reasons) or "no offer matches", retry
    backend, offer, total = offers[0]
    try:
        instance = create_instance(
            fleet=fleet, backend=backend, region=offer.region, availability_zone=offer.availability_zone,
            instance_type=offer.instance_type, resources=offer.resources, price=offer.price, spot=offer.spot,
            total_blocks=total, max_instances=limit,
        )
    except Conflict as err:  # drained since the offers were read: the next pass looks elsewhere
        if err.code != "backend_draining":
            raise
        return None, f"backend {backend.name} is draining", False
    if instance is None:
        return None, f"at its maximum of {maximum} instance(s)" if limit == maximum else "", False
    kick("fleets.process_instances")
    return instance, "", False


# --- fleets -----------------------------------------------------------------------------------


class FleetReconciler(Reconciler):
    """Live fleets are brought to ``nodes.min`` instances, and idle surplus instances are retired."""

    model = Fleet
    lease_seconds = 30

    def due(self) -> Q:
        return Q(status__in=(FleetStatus.SUBMITTED, FleetStatus.ACTIVE))

    def call(self, rows):
        return {}  # offers are read while growing, one fleet at a time (see grow_fleet)

    def record(self, fleet, result) -> Step:
        return Step(changed=bool(_reconcile_fleet(fleet, keep_lease=self.keep_lease)))


def reconcile_fleets() -> int:
    """One pass over every live fleet."""
    return FleetReconciler().run()


def _reconcile_fleet(fleet: Fleet, keep_lease=lambda: None) -> int:
    live = fleet.instances.filter(status__in=LIVE_STATES).count()
    created, why = 0, ""
    # MAX_NODES bounds a spec stored before nodes had a limit: no pass loops on a user's number;
    # a big fleet grows GROWTH_PER_PASS instances a pass, so one fleet cannot hold a worker long.
    for _ in range(min(GROWTH_PER_PASS, max(0, min(fleet.spec["nodes"]["min"], MAX_NODES) - live))):
        keep_lease()  # each growth reads offers from the providers: a long pass keeps its claim
        instance, why, _ = grow_fleet(fleet=fleet, up_to=fleet.spec["nodes"]["min"])
        if instance is None:
            break
        created += 1
    message = f"cannot reach {fleet.spec['nodes']['min']} instance(s): {why}" if why else ""
    if message != fleet.status_message:  # always says why the fleet is short, and nothing once it is not
        Fleet.objects.filter(pk=fleet.pk).update(status_message=message)
    if fleet.status == FleetStatus.SUBMITTED and live + created >= fleet.spec["nodes"]["min"]:
        with transaction.atomic():
            if compare_and_swap(Fleet, pk=fleet.pk, allowed_from=(FleetStatus.SUBMITTED,), to=FleetStatus.ACTIVE,
                                status_message=""):
                record_event(project=fleet.project_id, resource_type="fleet", resource_name=fleet.name,
                             kind="active")
    return created + _retire_idle_instances(fleet, live + created)


def _retire_idle_instances(fleet: Fleet, live: int) -> int:
    idle_duration = fleet.spec.get("idle_duration", 300)
    surplus = live - fleet.spec["nodes"]["min"]
    if idle_duration is None or surplus <= 0:
        return 0
    cutoff = timezone.now() - timedelta(seconds=idle_duration)
    idle = fleet.instances.filter(status=InstanceStatus.IDLE, busy_blocks=0, idle_since__lt=cutoff)
    retired = 0
    for instance in idle.order_by("idle_since")[:surplus]:
        retired += request_instance_termination(instance=instance, reason="idle_timeout", only_if_idle=True)
    return retired
