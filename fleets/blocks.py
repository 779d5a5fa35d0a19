"""Block accounting: the only code that changes ``Instance.busy_blocks``.

Every change is relative (``F()``) and happens in the caller's transaction together with the job
row change that justifies it, so ``busy_blocks`` always equals the blocks held by the instance's
unfinished jobs. The database ``CheckConstraint`` makes a violation fail loudly, never clamp.
"""

from django.db import transaction
from django.db.models import Case, ExpressionWrapper, F, IntegerField, Q, Value, When
from django.utils import timezone

from core.models import Event
from fleets.holders import live_blocks_expressions
from fleets.models import INSTANCE_ASSIGNABLE_STATES, INSTANCE_UP_STATES, Instance, InstanceStatus

_BUSY_OR_IDLE = Case(
    When(busy_blocks__gt=0, then=Value(InstanceStatus.BUSY)),
    default=Value(InstanceStatus.IDLE),
)


def take_blocks(*, instance_id: int, blocks: int) -> bool:
    """Reserve ``blocks`` on an instance if it has that many idle; False if it has not.

    Must run inside the transaction that assigns the job. The guarded update takes the row lock,
    so concurrent assignments serialize on the instance and none can overbook it.
    """
    # One statement: an up instance holding blocks is busy (one still coming up keeps its status).
    taken = Instance.objects.filter(
        pk=instance_id, status__in=INSTANCE_ASSIGNABLE_STATES, busy_blocks__lte=F("total_blocks") - blocks
    ).update(
        busy_blocks=F("busy_blocks") + blocks, idle_since=None, updated_at=timezone.now(),
        status=Case(When(status__in=INSTANCE_UP_STATES, then=Value(InstanceStatus.BUSY)), default=F("status")),
    )
    return bool(taken)


def give_back_blocks(*, instance_id: int, blocks: int) -> None:
    """Release ``blocks`` held by a job that is finishing in the caller's transaction."""
    if blocks <= 0:
        return
    Instance.objects.filter(pk=instance_id).update(busy_blocks=F("busy_blocks") - blocks, updated_at=timezone.now())
    _refresh_busy_status(instance_id)


def _refresh_busy_status(instance_id: int) -> None:
    """An up instance is ``busy`` while ``busy_blocks > 0``, else ``idle`` (since now)."""
    now = timezone.now()
    Instance.objects.filter(pk=instance_id, status__in=INSTANCE_UP_STATES).update(
        status=_BUSY_OR_IDLE,
        idle_since=Case(When(busy_blocks=0, idle_since__isnull=True, then=Value(now)),
                        When(busy_blocks=0, then=F("idle_since")), default=None),
    )


def _live_blocks_subquery():
    """The blocks the unfinished jobs of ``OuterRef("pk")`` hold, as the apps holding blocks report them."""
    total = Value(0)
    for expression in live_blocks_expressions():
        total = total + expression
    return ExpressionWrapper(total, output_field=IntegerField())


def verify_block_counts() -> list[dict]:
    """Recompute every instance's ``busy_blocks`` from its jobs and correct any drift.

    One query finds drifted instances: it reads ``busy_blocks`` and the jobs in the same statement
    snapshot, and an assignment or release changes both in one transaction, so a count that is right
    but mid-change never looks wrong. Each suspect is then locked and re-checked before correcting,
    so the correction cannot overwrite a concurrent change. Returns the corrections made.
    """
    suspects = list(
        Instance.objects.annotate(live=_live_blocks_subquery()).filter(~Q(busy_blocks=F("live")))
        .values_list("pk", flat=True)
    )
    return [c for pk in suspects if (c := _correct(pk)) is not None]


@transaction.atomic
def _correct(instance_id: int) -> dict | None:
    instance = (
        Instance.objects.select_for_update().annotate(live=_live_blocks_subquery()).filter(pk=instance_id).first()
    )
    if instance is None or instance.busy_blocks == instance.live:
        return None
    before, after = instance.busy_blocks, min(instance.live, instance.total_blocks)
    # An absolute write is right here (and only here): we hold the row lock, and every other
    # change to busy_blocks takes the same lock in the transaction of its job change.
    Instance.objects.filter(pk=instance_id).update(busy_blocks=after)
    _refresh_busy_status(instance_id)
    Event.objects.create(
        project_id=instance.project_id, resource_type="instance", resource_name=instance.name,
        kind="block_count_corrected", message=f"busy_blocks {before} -> {after} (jobs hold {instance.live})",
    )
    return {"instance": instance.name, "before": before, "after": after}
