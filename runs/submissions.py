"""The jobs of one submission of a run: one per node per replica, named ``{run}-{job_num}-{replica_num}``.

``submit_run`` makes the first submission, each trigger of a schedule the next (``runs.schedules``); both
come here, so a run's jobs are made one way whatever starts them.
"""

from runs.groups import replica_layout
from runs.models import Job, Run


def job_name(run_name: str, job_num: int, replica_num: int) -> str:
    return f"{run_name}-{job_num}-{replica_num}"


def run_jobs(run: Run, *, submission_num: int = 0) -> list[Job]:
    """The (unsaved) jobs of one submission of a run: one per node per replica."""
    return [
        Job(project_id=run.project_id, run=run, name=job_name(run.name, node, replica), replica_num=replica,
            job_num=node, submission_num=submission_num, group=group)
        for replica, group in replica_layout(run.spec)  # numbered in a row, group after group
        for node in range(int(run.spec.get("nodes") or 1))
    ]
