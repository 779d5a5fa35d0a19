"""Attachments through the drivers, on the one reconcile pipeline (``core.pipeline``): attach the
volumes of placed jobs, detach the ones jobs are done with, and force a detach once asked to or
once its run's ``stop_duration`` has run out.

The rules that make a stop trustworthy:

* A detach is done only when the provider says so (``is_volume_detached``). An error from the
  provider is shown on the attachment, written as an event, and retried with backoff; it is never
  taken for "detached".
* The attach and detach loops share the attachment row's lease: an attach call and a detach call
  for one attachment never overlap, and a worker killed in the middle of either leaves the row to
  be taken over, once the lease runs out, by whichever loop it is due for.
* A volume the provider attached is recorded as attached (``attached_at``) even when the job was
  stopped during the call: the detach that follows then knows there is something to detach.
"""

import dataclasses
import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from backends.drivers.base import DriverError, FatalError, NotFoundError, TransientError
from backends.drivers.registry import pass_drivers
from core.events import record_event
from core.kicks import kick
from core.pipeline import Reconciler, Step
from core.transitions import compare_and_swap
from fleets.models import INSTANCE_UP_STATES, InstanceStatus
from volumes.models import AttachmentStatus, VolumeAttachment
from volumes.signals import attachments_changed

DETACH_POLL_SECONDS = 1.0
DETACH_POLL_MAX_SECONDS = 30.0


def _event(attachment: VolumeAttachment, kind: str, message: str = "", actor: str = "") -> None:
    volume = attachment.volume
    record_event(project=volume.project_id, resource_type="volume", resource_name=volume.name, kind=kind,
                 message=message, actor=actor)


def _where(attachment: VolumeAttachment) -> str:
    job = f" for job {attachment.job.name}" if attachment.job_id and attachment.job else ""
    return f"instance {attachment.instance.name}{job}"


class _AttachmentLoop(Reconciler):
    model = VolumeAttachment
    message_field = "error"
    # Each attachment takes its own provider calls (no batched API for them): small batches get
    # each outcome recorded, and its job told, soon after its calls rather than after a hundred.
    batch_size = 10
    lease_seconds = 30

    def __init__(self):
        self.drivers = pass_drivers()
        self.settled_jobs: set[int] = set()

    def load(self, pks):
        return list(VolumeAttachment.objects.filter(pk__in=pks)
                    .select_related("volume__backend", "instance__backend", "job").order_by("pk"))

    def settled(self, attachment: VolumeAttachment) -> None:
        """The job of ``attachment`` has something new to act on (attached, failed, detached)."""
        if attachment.job_id:
            self.settled_jobs.add(attachment.job_id)

    def after_batch(self) -> None:
        # Per batch: a job waiting on this batch's attachments moves on without waiting for the pass.
        if self.settled_jobs:
            settled, self.settled_jobs = sorted(self.settled_jobs), set()
            attachments_changed.send(sender=type(self), job_ids=settled)
            kick("runs.process_jobs")

    def finish(self) -> None:
        self.after_batch()


# --- attach ---------------------------------------------------------------------------------------


class AttachTimedOut(Exception):
    """The attach did not complete within ``STACKYARD_ATTACH_TIMEOUT`` seconds."""


class Attacher(_AttachmentLoop):
    """``attaching`` attachments whose instance is up are attached at the provider; those whose
    instance is gone fail at once, and those still not attached after the timeout fail."""

    def due(self) -> Q:
        return Q(status=AttachmentStatus.ATTACHING,
                 instance__status__in=(*INSTANCE_UP_STATES, InstanceStatus.TERMINATING, InstanceStatus.TERMINATED))

    def call(self, rows):
        results = {}
        timeout = datetime.timedelta(seconds=settings.ATTACH_TIMEOUT)
        for attachment in rows:
            self.keep_lease()
            instance, volume = attachment.instance, attachment.volume
            if instance.status not in INSTANCE_UP_STATES:
                results[attachment.pk] = FatalError(f"instance {instance.name} is {instance.status}")
                continue
            if timezone.now() - attachment.created_at > timeout:
                results[attachment.pk] = AttachTimedOut(f"not attached after {settings.ATTACH_TIMEOUT:g} s")
                continue
            try:
                results[attachment.pk] = self.drivers.get(volume.backend).attach_volume(
                    volume_id=volume.volume_id, instance_id=instance.provider_instance_id, region=volume.region,
                    availability_zone=volume.availability_zone)
            except DriverError as err:
                results[attachment.pk] = err
        return results

    def record(self, attachment, result) -> Step:
        if isinstance(result, TransientError):
            return Step(failed=f"not attached yet, retrying: {result}")
        if isinstance(result, Exception):
            return self._failed(attachment, str(result))
        now = timezone.now()
        with transaction.atomic():
            moved = compare_and_swap(VolumeAttachment, pk=attachment.pk, allowed_from=(AttachmentStatus.ATTACHING,),
                                     to=AttachmentStatus.ATTACHED, device_name=result, attached_at=now, error="")
            if moved:
                _event(attachment, "attached", f"to {_where(attachment)} as {result}")
            else:
                # Stopped during the call: the provider attached it all the same, and the detach
                # that follows must know there is something to detach.
                VolumeAttachment.objects.filter(pk=attachment.pk, attached_at__isnull=True).update(
                    device_name=result, attached_at=now)
        self.settled(attachment)
        return Step(changed=moved)

    def _failed(self, attachment: VolumeAttachment, error: str) -> Step:
        with transaction.atomic():
            moved = compare_and_swap(VolumeAttachment, pk=attachment.pk, allowed_from=(AttachmentStatus.ATTACHING,),
                                     to=AttachmentStatus.FAILED, error=error)
            if moved:
                _event(attachment, "attach_failed", f"to {_where(attachment)}: {error}")
        self.settled(attachment)
        return Step(changed=moved)


# --- detach ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class DetachOutcome:
    """What one detach step got from the provider."""

    sent: bool = False  # a detach request was accepted in this step
    forced: bool = False  # ... and it was a forced one
    detached: bool = False
    error: DriverError | None = None


class Detacher(_AttachmentLoop):
    """``detaching`` attachments: the detach is sent once (again, forced, once forcing is asked),
    then polled until the provider confirms it."""

    def due(self) -> Q:
        return Q(status=AttachmentStatus.DETACHING)

    def call(self, rows):
        return {attachment.pk: self._step(attachment) for attachment in rows}

    def _step(self, attachment: VolumeAttachment) -> DetachOutcome:
        self.keep_lease()
        volume, instance = attachment.volume, attachment.instance
        outcome = DetachOutcome()
        if not instance.provider_instance_id or not volume.volume_id or volume.backend is None:
            outcome.detached = True  # the instance (or the volume) never existed: nothing is attached
            return outcome
        try:
            driver = self.drivers.get(volume.backend)
            ids = {"volume_id": volume.volume_id, "instance_id": instance.provider_instance_id,
                   "region": volume.region}
            if not attachment.detach_sent or (attachment.force and not attachment.force_sent):
                driver.detach_volume(force=attachment.force, **ids)
                outcome.sent, outcome.forced = True, attachment.force
            outcome.detached = driver.is_volume_detached(**ids)
        except NotFoundError as err:
            if instance.status == InstanceStatus.TERMINATED:
                outcome.detached = True  # the instance is gone at the provider, and its attachments with it
            else:
                outcome.error = err
        except DriverError as err:
            outcome.error = err
        return outcome

    def record(self, attachment, outcome: DetachOutcome) -> Step:
        if outcome.sent:
            VolumeAttachment.objects.filter(pk=attachment.pk).update(
                detach_sent=True, **({"force_sent": True} if outcome.forced else {}))
        if outcome.error is not None:
            kind = "forced detach" if attachment.force else "detach"
            _event(attachment, "detach_error", f"{kind} from {_where(attachment)} failed: {outcome.error}")
            self.settled(attachment)  # its job shows the error
            return Step(failed=f"detach failed, retrying: {outcome.error}")
        if not outcome.detached:
            if attachment.error:
                VolumeAttachment.objects.filter(pk=attachment.pk).update(error="")
                self.settled(attachment)
            if VolumeAttachment.objects.filter(pk=attachment.pk, force=True, force_sent=False).exists():
                return Step()  # forced during our call (an abort): sent at once, not after the poll rest
            waited = (timezone.now() - (attachment.detach_requested_at or timezone.now())).total_seconds()
            return Step(after=min(DETACH_POLL_MAX_SECONDS, max(DETACH_POLL_SECONDS, waited / 10)))
        with transaction.atomic():
            moved = compare_and_swap(VolumeAttachment, pk=attachment.pk, allowed_from=(AttachmentStatus.DETACHING,),
                                     to=AttachmentStatus.DETACHED, detached_at=timezone.now(), error="")
            if moved:
                _event(attachment, "detached", f"from {_where(attachment)}" + (" (forced)" if attachment.force else ""))
        if moved:
            self.settled(attachment)
            kick("fleets.terminate_instances")  # an instance may have waited for this volume
        return Step(changed=moved)


def attach_volumes() -> int:
    """One pass of the attach loop."""
    return Attacher().run()


def detach_volumes() -> int:
    """One pass of the detach loop."""
    return Detacher().run()


# --- stop_duration --------------------------------------------------------------------------------


def enforce_stop_durations() -> int:
    """Turn into forced ones the detaches whose ``force_after`` has passed (the run's
    ``stop_duration``); each escalation writes an event on the volume and on the run."""
    now = timezone.now()
    due = list(VolumeAttachment.objects.filter(status=AttachmentStatus.DETACHING, force=False,
                                               force_after__lte=now)
               .select_related("volume", "instance", "job__run").order_by("pk"))
    escalated = 0
    for attachment in due:
        with transaction.atomic():
            # Guarded: a concurrent pass (or an abort) forcing it first makes this a no-op.
            if not VolumeAttachment.objects.filter(pk=attachment.pk, status=AttachmentStatus.DETACHING,
                                                   force=False).update(force=True, last_processed_at=None):
                continue
            message = f"detach from {_where(attachment)} not done by the stop_duration deadline: forcing it"
            _event(attachment, "stop_duration_exceeded", message)
            if attachment.job_id and attachment.job:
                record_event(project=attachment.job.project_id, resource_type="run",
                             resource_name=attachment.job.run.name, kind="stop_duration_exceeded",
                             message=f"volume {attachment.volume.name}: {message}")
        escalated += 1
    if escalated:
        kick("volumes.detach_volumes")
    return escalated
