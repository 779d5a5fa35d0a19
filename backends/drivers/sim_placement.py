"""Cluster placement groups of the ``sim`` driver: the ``SimPlacementGroups`` mixin.

They behave as EC2's ``Strategy=cluster`` groups do, so the control plane's ``placement: cluster``
fleets meet the same rules as on AWS:

* ``create_placement_group`` is idempotent on the name (a live group of that name is the answer; one of
  that name in another region is refused). Groups are rows of ``SimPlacementGroup``, which tests read.
* A create with ``placement_group`` needs that live group in the offer's region, and every live
  instance of a group is in one zone: launching into another zone is refused (``FatalError``).
* ``delete_placement_group`` raises ``TransientError`` while a live instance is in the group (AWS's
  ``InvalidPlacementGroup.InUse``), and is a no-op for a group that is gone.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from backends.drivers.base import FatalError, Offer, TransientError
from backends.drivers.sim_calls import _sim_call
from backends.sim_models import SimInstance, SimInstanceState, SimPlacementGroup

_LIVE = (SimInstanceState.PROVISIONING, SimInstanceState.RUNNING)


class SimPlacementGroups:
    """The placement-group calls of ``SimDriver`` (a mixin: it relies on ``backend`` and ``locations``)."""

    def _live_group(self, name: str) -> SimPlacementGroup | None:
        return SimPlacementGroup.objects.filter(backend_id=self.backend.pk, name=name, deleted_at__isnull=True).first()

    @_sim_call
    def create_placement_group(self, *, region: str, name: str) -> str:
        if region not in self.locations():
            raise FatalError(f"region {region!r} is not one of this backend's regions")
        for _ in range(2):  # a concurrent create of the same name wins the insert: its group is ours
            group = self._live_group(name)
            if group is not None:
                if group.region != region:
                    raise FatalError(f"placement group {name!r} exists in {group.region}, not in {region}")
                return name
            try:
                with transaction.atomic():
                    SimPlacementGroup.objects.create(backend_id=self.backend.pk, name=name, region=region)
                return name
            except IntegrityError:
                continue
        raise TransientError(f"placement group {name!r} is being created; try again")

    @_sim_call
    def delete_placement_group(self, *, region: str, name: str) -> None:
        group = self._live_group(name)
        if group is None:
            return
        users = SimInstance.objects.filter(backend_id=self.backend.pk, placement_group=name, state__in=_LIVE).count()
        if users:
            raise TransientError(f"placement group {name!r} is in use by {users} instance(s)")
        SimPlacementGroup.objects.filter(pk=group.pk, deleted_at__isnull=True).update(deleted_at=timezone.now())

    def _placement_problem(self, placement_group: str, offer: Offer) -> str:
        """Why an instance of ``offer`` cannot go into ``placement_group`` ("" if it can)."""
        group = self._live_group(placement_group)
        if group is None:
            return f"placement group {placement_group!r} does not exist"
        if group.region != offer.region:
            return f"placement group {placement_group!r} is in {group.region}, not in {offer.region}"
        zones = set(SimInstance.objects.filter(backend_id=self.backend.pk, placement_group=placement_group,
                                               state__in=_LIVE).values_list("availability_zone", flat=True))
        if zones and offer.availability_zone not in zones:
            return (f"cluster placement group {placement_group!r} is in {', '.join(sorted(zones))}, "
                    f"not in {offer.availability_zone}")
        return ""
