"""Instances through their drivers, on the one reconcile pipeline (``core.pipeline``): create the
pending ones, poll the live ones, terminate the ones let go.

* A create carries the row's client token and our tags, so a create retried after a crash or a
  lost reply finds the VM the first call made, and the orphan finder can tell ours apart.
* An instance of a ``placement: cluster`` fleet is created in the fleet's placement group: the first
  create asks the driver for it (idempotent, named after the fleet) and records its name on the fleet.
* The provider's id is recorded whatever happened to the row during the call. A VM created for a
  row that was let go meanwhile is terminated: by the termination loop if the row is
  ``terminating``, at once if the row is already finished or gone.
* A poll error (not found, throttled, anything) is shown on the row and retried with backoff. Only
  the provider saying ``terminated`` or ``interrupted`` makes an instance lost.
"""

import logging

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from backends.drivers.base import (
    DriverError,
    NoCapacityError,
    NotFoundError,
    Offer,
    TransientError,
    managed_tags,
)
from backends.drivers.registry import pass_drivers
from core.events import record_event
from core.kicks import kick
from core.pipeline import Reconciler, Step
from core.transitions import compare_and_swap
from fleets.holders import held
from fleets.models import INSTANCE_UP_STATES, Fleet, Instance, InstanceStatus
from fleets.services import TERMINATABLE_STATES, finish_fleet_if_empty

logger = logging.getLogger(__name__)
PROVISIONING_POLL_SECONDS = 1
UP_POLL_SECONDS = 5
LOSABLE_STATES = (*TERMINATABLE_STATES, InstanceStatus.TERMINATING)


def _event(instance: Instance, kind: str, message: str = "") -> None:
    record_event(project=instance.project_id, resource_type="instance", resource_name=instance.name, kind=kind,
                 message=message)


def client_token(instance: Instance) -> str:
    return instance.client_token or f"stackyard-instance-{instance.pk}"


def tags(instance: Instance) -> dict[str, str]:
    """The tags every VM we create carries (the orphan finder reads them back)."""
    return managed_tags(project=instance.project.name, fleet=instance.fleet.name, instance=instance.name)


def placement_group_name(instance: Instance) -> str:
    """The placement group of the instance's fleet: unique per fleet row (a fleet re-created under the
    same name gets a new one while the old one may still be deleting), at most 128 characters."""
    fleet = instance.fleet
    return f"stackyard-{instance.project.name[:40]}-{fleet.name[:60]}-{fleet.pk}"


def offer_of(instance: Instance) -> Offer:
    return Offer(instance_type=instance.instance_type, region=instance.region,
                 availability_zone=instance.availability_zone, resources=instance.resources,
                 price=float(instance.price), spot=instance.spot)


class _InstanceLoop(Reconciler):
    model = Instance

    def __init__(self):
        self.drivers = pass_drivers()

    def load(self, pks):
        return list(Instance.objects.filter(pk__in=pks).select_related("backend", "fleet", "project").order_by("pk"))


# --- create -------------------------------------------------------------------------------------


class Provisioner(_InstanceLoop):
    """``pending`` instances are created at their provider and become ``provisioning``."""

    def due(self) -> Q:
        return Q(status=InstanceStatus.PENDING)

    def call(self, rows):
        results, groups = {}, {}
        for instance in rows:
            self.keep_lease()
            try:
                driver = self.drivers.get(instance.backend)
                group = self._placement_group(driver, instance, groups)
                results[instance.pk] = driver.create_instance(
                    name=instance.name, offer=offer_of(instance), tags=tags(instance),
                    client_token=client_token(instance), **({"placement_group": group} if group else {}))
            except DriverError as err:
                results[instance.pk] = err
        return results

    @staticmethod
    def _placement_group(driver, instance: Instance, groups: dict[int, str]) -> str:
        """The placement group the instance goes into: "" unless its fleet is ``placement: cluster``
        (and its driver has the concept). Made at the first create and recorded on the fleet."""
        fleet = instance.fleet
        if fleet.spec.get("placement") != "cluster":
            return ""
        if fleet.placement_group or fleet.pk in groups:
            return fleet.placement_group or groups[fleet.pk]
        name = placement_group_name(instance)
        groups[fleet.pk] = driver.create_placement_group(region=instance.region, name=name)
        if groups[fleet.pk]:
            Fleet.objects.filter(pk=fleet.pk, placement_group="").update(placement_group=groups[fleet.pk])
        return groups[fleet.pk]

    def record(self, instance, result) -> Step:
        if isinstance(result, TransientError):
            return Step(failed=f"provider error, retrying: {result}")
        if isinstance(result, NoCapacityError):
            where = (f" in cluster zone {instance.fleet.cluster_zone} (placement: cluster: no other zone is tried)"
                     if instance.fleet.spec.get("placement") == "cluster" else "")
            return Step(changed=lose_instance(instance, reason="no_capacity",
                                              message=f"no capacity{where}: {result}"))
        if isinstance(result, Exception):
            return Step(changed=lose_instance(instance, reason="provisioning_failed", message=str(result)))
        return self._created(instance, result)

    def _created(self, instance: Instance, provider_id: str) -> Step:
        # Kept whatever happened to the row meanwhile: a VM we cannot name is a VM we leak.
        Instance.objects.filter(pk=instance.pk, provider_instance_id="").update(provider_instance_id=provider_id)
        with transaction.atomic():
            moved = compare_and_swap(Instance, pk=instance.pk, allowed_from=(InstanceStatus.PENDING,),
                                     to=InstanceStatus.PROVISIONING, status_message="")
            if moved:
                _event(instance, "provisioning", f"provider id {provider_id}")
                kick("fleets.process_instances")
        if moved:
            return Step(changed=True, after=PROVISIONING_POLL_SECONDS)
        status = Instance.objects.filter(pk=instance.pk).values_list("status", flat=True).first()
        if status is None or status == InstanceStatus.TERMINATED:
            self._terminate_leftover(instance, provider_id)
        else:
            kick("fleets.terminate_instances")  # terminating: the termination loop has the id now
        return Step()

    def _terminate_leftover(self, instance: Instance, provider_id: str) -> None:
        """The row was let go while its VM was being created: terminate the VM now."""
        try:
            self.drivers.get(instance.backend).terminate_instance(instance_id=provider_id)
        except DriverError as err:
            logger.warning("could not terminate %s (%s), created for %s after it was let go: %s; the orphan "
                           "finder will report it", provider_id, instance.backend, instance.name, err)
            return
        if Instance.objects.filter(pk=instance.pk).exists():
            with transaction.atomic():
                _event(instance, "leftover_terminated", f"{provider_id} was created after the instance was let go")


# --- poll ---------------------------------------------------------------------------------------


class Poller(_InstanceLoop):
    """Instances coming up become ``idle`` (or ``busy``) once running; up ones are watched for loss."""

    batch_size = 200

    def due(self) -> Q:
        live = (InstanceStatus.PROVISIONING, *INSTANCE_UP_STATES)
        return Q(status__in=live) & ~Q(provider_instance_id="")

    def call(self, rows):
        def poll(driver, group):
            states = driver.instance_states(instance_ids=[instance.provider_instance_id for instance in group])
            return {instance.pk: states.get(instance.provider_instance_id) for instance in group}

        return self.drivers.ask(rows, lambda instance: instance.backend, poll)

    def record(self, instance, state) -> Step:
        interval = PROVISIONING_POLL_SECONDS if instance.status == InstanceStatus.PROVISIONING else UP_POLL_SECONDS
        if isinstance(state, NotFoundError):
            return Step(after=interval, failed=f"the provider does not know {instance.provider_instance_id} "
                                               f"(yet); asking again: {state}")
        if isinstance(state, Exception) or state is None:
            return Step(after=interval, failed=f"could not ask the provider, retrying: {state}")
        if state in ("interrupted", "terminated"):
            message = f"instance {instance.name} was {state} by the provider"
            return Step(changed=lose_instance(instance, reason="interrupted", message=message))
        if instance.status_message:
            Instance.objects.filter(pk=instance.pk, status=instance.status).update(status_message="")
        if state == "running" and instance.status == InstanceStatus.PROVISIONING:
            return Step(changed=_mark_up(instance), after=UP_POLL_SECONDS)
        return Step(after=interval)


def _mark_up(instance: Instance) -> bool:
    with transaction.atomic():
        instance = Instance.objects.select_for_update().get(pk=instance.pk)
        to = InstanceStatus.BUSY if instance.busy_blocks else InstanceStatus.IDLE
        moved = compare_and_swap(Instance, pk=instance.pk, allowed_from=(InstanceStatus.PROVISIONING,), to=to,
                                 idle_since=None if instance.busy_blocks else timezone.now(), status_message="")
        if moved:
            _event(instance, to, "up")
            kick("runs.process_jobs")
    return moved


def lose_instance(instance: Instance, *, reason: str, message: str) -> bool:
    """The instance is gone (never created, or lost at the provider). Its jobs are settled by the
    job loop (``runs``): not yet started ones go back to the queue after ``no_capacity``, the others
    fail; their blocks are released with them. The fleet refills itself."""
    with transaction.atomic():
        moved = compare_and_swap(Instance, pk=instance.pk, allowed_from=LOSABLE_STATES,
                                 to=InstanceStatus.TERMINATED, termination_reason=reason, status_message=message)
        if moved:
            _event(instance, "terminated", message)
            for task in ("runs.process_jobs", "runs.place_jobs", "fleets.process_fleets"):
                kick(task)
    if moved:
        finish_fleet_if_empty(fleet_id=instance.fleet_id)
    return moved


# --- terminate ----------------------------------------------------------------------------------


class Terminator(_InstanceLoop):
    """``terminating`` instances that nothing holds any more are terminated at their provider."""

    def due(self) -> Q:
        return Q(status=InstanceStatus.TERMINATING) & ~Q(pk__in=Instance.objects.filter(held()).values("pk"))

    def call(self, rows):
        results = {}
        for instance in rows:
            self.keep_lease()
            try:
                driver = self.drivers.get(instance.backend) if instance.backend is not None else None
                provider_id = instance.provider_instance_id
                if driver is not None and not provider_id:
                    # A create may have reached the provider before the row could record its answer.
                    provider_id = driver.find_instance(client_token=client_token(instance)) or ""
                if driver is not None and provider_id:
                    driver.terminate_instance(instance_id=provider_id)
                results[instance.pk] = provider_id
            except NotFoundError:
                results[instance.pk] = instance.provider_instance_id  # already gone: what we wanted
            except DriverError as err:
                results[instance.pk] = err
        return results

    def record(self, instance, result) -> Step:
        if isinstance(result, Exception):
            return Step(failed=f"termination failed, retrying: {result}")
        with transaction.atomic():
            moved = compare_and_swap(Instance, pk=instance.pk, allowed_from=(InstanceStatus.TERMINATING,),
                                     to=InstanceStatus.TERMINATED, status_message="",
                                     **({"provider_instance_id": result} if result else {}))
            if moved:
                _event(instance, "terminated", instance.termination_reason)
                kick("fleets.process_fleets")
        finish_fleet_if_empty(fleet_id=instance.fleet_id)
        return Step(changed=moved)


def process_instances() -> int:
    """One pass: create pending instances, then poll the live ones."""
    return Provisioner().run() + Poller().run()


def process_terminating_instances() -> int:
    """One pass: terminate the instances let go that nothing holds any more."""
    return Terminator().run()
