"""Rolling updates: the replicas of a service that run an older spec version are replaced one at a time.

Re-applying a service with a changed job spec bumps ``Run.spec_version`` (``runs.services``). Each
pass looks at every service with a live replica of an older version: while a replica of the current
version is live but not ready yet (a replacement coming up), it waits; once every one is ready, it
stops one old replica if the service has more replicas than it wants, and otherwise starts one new
replica. So a service holds one replica more than it wants at most, and an old replica stops only
once its replacement is ready: the number of ready replicas never drops during an update. With replica
groups, all this happens within the group of the old replica (its replacement joins the same group);
a re-apply that changes only some groups' job fields leaves the others' replicas as they are
(``runs.services``), so only the changed groups are rolled.

Each service is one step in a short transaction that holds its run row (SKIP LOCKED: a service
another worker holds is skipped this pass, so two workers never start two replacements) and calls
no driver: it only submits jobs (placement starts them) or asks for stops (the workload loop does
them). ``submit_run`` locks the same row, so a re-apply never interleaves with a step. Lock order:
run, then its jobs, as in ``runs.jobs.start_run_termination``.
"""

import time

from django.db import transaction
from django.db.models import Exists, OuterRef

from core.pipeline import DEFAULT_BUDGET_SECONDS
from runs.groups import desired_by_group, scaled_down_message
from runs.jobs import record_run_event
from runs.models import Job, Run, RunStatus, RunType
from runs.services import LIVE_JOB_STATES, Replica, next_replica_num, service_replicas, start_replicas, stop_replicas

ROLLING_RUN_STATES = (RunStatus.PENDING, RunStatus.SUBMITTED, RunStatus.PROVISIONING, RunStatus.RUNNING)


def roll_out(*, budget: float = DEFAULT_BUDGET_SECONDS) -> int:
    """One pass over the services being updated; returns how many replicas it started or stopped."""
    outdated = Job.objects.filter(run=OuterRef("pk"), status__in=LIVE_JOB_STATES,
                                  spec_version__lt=OuterRef("spec_version"))
    run_ids = list(Run.objects.filter(Exists(outdated), type=RunType.SERVICE, status__in=ROLLING_RUN_STATES)
                   .order_by("pk").values_list("pk", flat=True))
    deadline, changed = time.monotonic() + budget, 0
    for run_id in run_ids:
        if time.monotonic() >= deadline:
            break
        changed += _step(run_id)
    return changed


def _step(run_id: int) -> int:
    """Move one service's update one step on; 1 if a replica was started or stopped."""
    with transaction.atomic():
        run = (Run.objects.select_for_update(skip_locked=True)
               .filter(pk=run_id, type=RunType.SERVICE, status__in=ROLLING_RUN_STATES).first())
        if run is None:
            return 0  # another worker holds it, or it is stopping now
        replicas = service_replicas(run)
        old = [r for r in replicas if r.live and r.version < run.spec_version]
        new = [r for r in replicas if r.live and r.version >= run.spec_version]
        if not old or not all(r.ready for r in new):
            return 0  # nothing left to replace, or a replacement is still coming up
        # A replica is replaced within its group (with the group's resources and commands), a group at a time.
        group = old[0].group
        mine = [r for r in replicas if r.group == group]
        wanted = desired_by_group(run.spec).get(group, 0)
        if len(mine) <= wanted:
            return _start_replacement(run, old, group)
        return _stop_replaced(run, mine, [r for r in old if r.group == group], [r for r in new if r.group == group],
                              wanted, last=len(old) == 1)


def _start_replacement(run: Run, old: list[Replica], group: str) -> int:
    num = next_replica_num(run)
    start_replicas(run=run, nums=[num], group=group)
    record_run_event(run, "replica_started", f"replica {num} (version {run.spec_version}) started to replace one "
                                             f"of {len(old)} replicas of an older version"
                                             + (f" (group {group})" if group else ""))
    return 1


def _stop_replaced(run: Run, replicas: list[Replica], old: list[Replica], new: list[Replica], wanted: int, *,
                   last: bool) -> int:
    """Stop one old replica of a group: one that is not ready first, else the highest number; never one
    whose stop would leave the group fewer replicas ready than now (or than it wants)."""
    victim = min(old, key=lambda r: (r.ready, -r.num))
    ready = sum(r.ready for r in replicas)
    if ready - victim.ready < min(ready, wanted):
        return 0  # e.g. a failed replica waiting for its retry still counts: wait for it
    newest = max((r.num for r in new), default=None)
    message = f"replaced by replica {newest}" if newest is not None else scaled_down_message(run.spec, victim.group)
    stop_replicas(replicas=[victim], message=message)
    record_run_event(run, "replica_replaced" if newest is not None else "scaled", f"replica {victim.num} {message}")
    if last:
        record_run_event(run, "update_done", f"every replica runs version {run.spec_version}")
    return 1
