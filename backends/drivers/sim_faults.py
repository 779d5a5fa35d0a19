"""Faults of a sim backend: the API and the admin add, list and clear them; the sim driver reads them.

Each kind's keys are in ``sim_catalogue.FAULT_SCHEMAS`` (required) and ``OPTIONAL_FAULT_KEYS``; what
each does is in ``backends.drivers.sim``'s docstring. A fault applies from the next driver call on.
Kinds: ``stuck_detach``, ``slow_detach``, ``stuck_attach``, ``no_capacity`` (optionally one zone),
``fail_volume_create``, ``crash_job``, ``interrupt_instance``, ``api_errors``, ``orphan_instance``, ``probe_fail``,
and the job reports ``gpu_utilization`` and ``inactive`` (not in ``SimFaultKind``'s choices yet: stored as given).
"""

from django.db import transaction

from backends.drivers.base import FatalError
from backends.drivers.sim import SimDriver
from backends.drivers.sim_catalogue import FAULT_SCHEMAS, validate_fault
from backends.sim_models import SimFault, SimFaultKind
from core.errors import InvalidInput

__all__ = ["add_fault", "clear_faults", "list_faults", "validate_fault"]


def _require_sim(backend) -> None:
    if backend.type != "sim":
        raise InvalidInput(
            f"backend {backend.name!r} is a {backend.type} backend; faults exist only on sim backends",
            code="not_a_sim_backend",
        )


def add_fault(backend, payload: dict) -> SimFault:
    """Validate and store a fault on a sim backend; it applies to every driver call from now on.

    ``orphan_instance`` acts once, when added: a running VM tagged as ours appears in the region
    (its ``name`` if given), which no instance row knows; clearing the fault leaves the VM running.
    """
    _require_sim(backend)
    fault = validate_fault(payload)
    if fault["kind"] != SimFaultKind.ORPHAN_INSTANCE:
        return SimFault.objects.create(backend=backend, kind=fault.pop("kind"), params=fault)
    try:
        driver = SimDriver(backend)
    except FatalError as err:  # a stored config that no longer validates
        raise InvalidInput(str(err), code="invalid_config") from None
    if (region := fault["region"]) not in (regions := driver.locations()):
        detail = f"fault orphan_instance: region {region!r} is not one of the backend's regions: {', '.join(regions)}"
        raise InvalidInput(detail, code="invalid_fault", field="region")
    with transaction.atomic():
        fault["name"] = driver.plant_orphan(region=fault["region"], name=fault.get("name", "")).name
        return SimFault.objects.create(backend=backend, kind=fault.pop("kind"), params=fault)


def list_faults(backend):
    """The backend's faults, oldest first (a queryset of ``SimFault``)."""
    _require_sim(backend)
    return SimFault.objects.filter(backend=backend).order_by("id")


def clear_faults(backend, kind: str | None = None) -> int:
    """Delete the backend's faults (only those of ``kind`` if given); return how many were deleted."""
    _require_sim(backend)
    if kind is not None and kind not in FAULT_SCHEMAS:
        raise InvalidInput(f"unknown fault kind {kind!r}", code="invalid_fault", field="kind")
    faults = SimFault.objects.filter(backend=backend)
    if kind is not None:
        faults = faults.filter(kind=kind)
    deleted, _ = faults.delete()
    return deleted
