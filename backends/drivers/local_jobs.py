"""Jobs of the ``local`` driver: real processes, each in its own process group, that outlive the worker.

A job is the folder ``jobs/<workload id>/`` of the backend (the workload id is the start's client token,
so a start retried with its token finds the folder and answers the same workload):

* ``job.json`` (what was launched), ``script.sh`` (the commands, one a line), ``work/`` (the working
  directory), ``output.log`` (stdout and stderr together: ``job_logs`` reads it);
* ``process.json``: pid, process group, start time and boot id of the job's wrapper, written as soon as
  it is started; the wrapper also writes its own ``pid`` first thing, should the worker die before that;
* ``exit_status``: written by the wrapper when the script ends, so any worker, before or after a
  restart, reads how it ended; ``stop.json`` once a stop was asked.

The wrapper is ``/bin/sh -c 'echo $$ > pid; /bin/sh -e script.sh; echo $? > exit_status'`` started with
``start_new_session``: commands run in order and the first failing one ends the script with its status,
as under ``set -e``. The wrapper traps SIGTERM, so it lives (and the job counts as running) until the
script has ended, however long the script takes to shut down.

The job's environment is the worker's, without the server's own settings (``STACKYARD_*``, ``DJANGO_*``,
``CELERY_*``, ``DATABASE_URL``), with ``PYTHONUNBUFFERED=1`` (logs show up as they are written), its
mounts' ``STACKYARD_VOLUME_<NAME>`` and then the job's ``env``. Each mount is also linked into ``work/``
under its path's last part (``/data`` -> ``work/data``).

Polling: ``running`` while the wrapper lives; then ``done`` (status 0) or ``failed`` (``error``) with
the exit status. A job asked to stop ends ``stopped`` (``failed``, ``interruption`` when it was its
instance's termination). A wrapper that died without an exit status, unasked, was killed behind our back
(``failed``, ``error``) or lost with a restart of the machine (``failed``, ``interruption``). What a
finished script leaves running in its group is killed, as a container's end would.
A running job reports neither GPU utilization nor inactivity (``JobState.gpu_utilization`` and
``inactive_seconds`` stay None: unknown, never idle): there are no per-process GPU figures without
``nvidia-smi``'s accounting, and no SSH/IDE sessions to count on a local process.

Stopping: SIGTERM to the group, then SIGKILL after a grace period. ``stop_job`` returns once SIGTERM is
sent and records the deadline (``STOP_GRACE_SECONDS``, 10 s); a later poll or stop past it sends SIGKILL.
``stop_jobs`` is what the job loop calls, and the loop takes its answer as final (it asks no more), so it
cannot leave the SIGKILL to a later call: it waits up to ``STOP_WAIT_SECONDS`` (2 s) for the groups to
end, SIGKILLs the rest and waits for them too. A job stopped by the job loop thus gets 2 s to shut down,
not 10, no job outlives its stop, and a worker waits at most about 4 s per batch, however many jobs.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path, PurePosixPath

from backends.drivers import local_host
from backends.drivers.base import (
    DriverError,
    FatalError,
    JobFailure,
    JobLaunch,
    JobState,
    JobStatus,
    NotFoundError,
)
from backends.drivers.local_host import SAFE_NAME, read_json, safe_part, write_json

STOP_GRACE_SECONDS = 10
STOP_WAIT_SECONDS = 2
KILL_WAIT_SECONDS = 2
# A job folder with no process after this long was left by a worker that died while starting it.
START_TIMEOUT_SECONDS = 60
# The wrapper outlives a SIGTERM (a trap, unlike an ignore, is not inherited): it stays the sign that the
# script runs for as long as the script takes to end, and records how the script ended.
WRAPPER = 'trap true TERM; echo $$ > "$0/pid"; /bin/sh -e "$0/script.sh"; echo $? > "$0/exit_status"'
SERVER_ENV_PREFIXES = ("STACKYARD_", "DJANGO_", "CELERY_")
SERVER_ENV_NAMES = ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")


def volume_env_name(name: str) -> str:
    """``STACKYARD_VOLUME_<NAME>``: upper-cased, every other character than a letter or digit is ``_``."""
    return "STACKYARD_VOLUME_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def _job_env(launch_env: dict, volumes: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SERVER_ENV_PREFIXES) and k not in SERVER_ENV_NAMES}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(volumes)
    env.update({str(k): "" if v is None else str(v) for k, v in launch_env.items()})
    return env


def _read_exit_status(folder: Path) -> int | None:
    try:
        text = (folder / "exit_status").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None  # empty: being written right now


def _reap(process: subprocess.Popen) -> None:
    """Collect the wrapper's exit in the process that started it, so it does not linger as a zombie."""
    try:
        process.wait()
    except ChildProcessError:  # someone else reaped it (SIGCHLD ignored): nothing to do
        pass


class LocalJobs:
    """The job calls of ``LocalDriver``: a mixin relying on its ``root``, ``_live_instance``,
    ``attached_volume`` and ``volume_dir``; see the module docstring."""

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    def _folder(self, workload_id: str) -> Path:
        folder = self.jobs_dir / workload_id
        if not SAFE_NAME.fullmatch(workload_id) or ".." in workload_id or not folder.is_dir():
            raise NotFoundError(f"workload {workload_id!r} not found")
        return folder

    # --- start ---------------------------------------------------------------------------------

    def start_job(self, *, job_name: str, instance_id: str, commands: list[str], env: dict,
                  mounts: list | None = None) -> str:
        return self.start_launch(JobLaunch(job_name, instance_id, list(commands), dict(env), mounts=list(mounts or [])))

    def start_launch(self, launch: JobLaunch) -> str:
        workload_id = safe_part(launch.client_token) if launch.client_token else f"job-{uuid.uuid4().hex[:16]}"
        folder = self.jobs_dir / workload_id
        if self._started_before(folder, launch):  # a retried start answers the first, whatever happened since
            return workload_id
        self._live_instance(launch.instance_id)
        links, volumes = self._mounts(launch)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()  # atomic: of two starts with one token, one launches and both answer its workload
        except FileExistsError:
            return workload_id
        try:
            self._launch(folder, launch, links, volumes)
        except (OSError, ValueError) as err:  # ValueError: an env name Popen refuses
            write_json(folder / "start_error.json", {"error": str(err)})
            raise FatalError(f"could not start job {launch.job_name}: {err}") from err
        return workload_id

    @staticmethod
    def _started_before(folder: Path, launch: JobLaunch) -> bool:
        """True if a start with this token made the folder (or is making it right now)."""
        if not folder.is_dir():
            return False
        known = read_json(folder / "job.json")
        if known is None or (known["job_name"], known["instance_id"]) == (launch.job_name, launch.instance_id):
            return True
        # Left by another database's job with the same token (the data dir outlived its database).
        folder.rename(folder.with_name(f"{folder.name}.stale-{uuid.uuid4().hex[:8]}"))
        return False

    def _mounts(self, launch: JobLaunch) -> tuple[dict[str, Path], dict[str, str]]:
        """``({link name: directory}, {env name: directory})`` of the launch's mounts, or ``FatalError``."""
        links: dict[str, Path] = {}
        volumes: dict[str, str] = {}
        for mount in launch.mounts:
            path = mount.get("path") if isinstance(mount, dict) else None
            link = PurePosixPath(path).name if isinstance(path, str) else ""
            if not link or link in (".", ".."):
                raise FatalError(f"job {launch.job_name}: mount {mount!r} has no usable path")
            if mount.get("volume_id"):
                record = self.attached_volume(mount["volume_id"], launch.instance_id)
                directory, name = self.volume_dir(record), record["name"]
            elif isinstance(mount.get("instance_path"), str) and mount["instance_path"].startswith("/"):
                directory, name = Path(mount["instance_path"]), link
            else:
                raise FatalError(f"job {launch.job_name}: mount {mount!r} needs a volume or an absolute instance_path")
            if link in links:
                raise FatalError(f"job {launch.job_name}: two mounts end in {link!r}; their links would collide")
            links[link] = directory
            volumes[volume_env_name(name)] = str(directory)
        return links, volumes

    def _launch(self, folder: Path, launch: JobLaunch, links: dict[str, Path], volumes: dict[str, str]) -> None:
        work = folder / "work"
        work.mkdir()
        for link, directory in links.items():
            directory.mkdir(parents=True, exist_ok=True)
            (work / link).symlink_to(directory, target_is_directory=True)
        (folder / "script.sh").write_text("\n".join(launch.commands) + "\n")
        write_json(folder / "job.json", {"job_name": launch.job_name, "instance_id": launch.instance_id,
                                         "client_token": launch.client_token, "commands": launch.commands,
                                         "env_names": sorted(launch.env), "mounts": launch.mounts,
                                         "created_at": time.time()})
        with open(folder / "output.log", "ab") as log:
            process = subprocess.Popen(["/bin/sh", "-c", WRAPPER, str(folder)], cwd=work,
                                       env=_job_env(launch.env, volumes), stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        threading.Thread(target=_reap, args=(process,), daemon=True, name=f"reap-{folder.name}").start()
        write_json(folder / "process.json", {"pid": process.pid, "pgid": process.pid, "boot_id": local_host.boot_id(),
                                             "starttime": local_host.start_time(process.pid),
                                             "started_at": time.time()})
        if (folder / "stop.json").exists():  # stopped while it was being started: the stop reaches it
            local_host.signal_group(process.pid, signal.SIGTERM)

    # --- state ---------------------------------------------------------------------------------

    @staticmethod
    def _process(folder: Path) -> dict | None:
        process = read_json(folder / "process.json")
        if process is None and (pid := _read_pid(folder)) is not None:
            process = {"pid": pid, "pgid": pid, "boot_id": "", "starttime": ""}
        return process

    def poll_job(self, *, workload_id: str) -> JobState:
        return self._state(self._folder(workload_id))

    def _state(self, folder: Path) -> JobState:
        exit_status = _read_exit_status(folder)
        process = self._process(folder)
        stop = read_json(folder / "stop.json")
        if exit_status is None:
            if process is None:
                return self._not_started(folder)
            if local_host.is_running(process["pid"], process["starttime"]) and not _rebooted(process):
                if stop is not None and time.time() >= stop["kill_after"]:
                    _signal(process, signal.SIGKILL)
                return JobState(JobStatus.RUNNING.value, None)
            exit_status = _read_exit_status(folder)  # it may have ended between the two reads
        self._clean_up(folder, process)
        if stop is not None:
            if stop.get("interruption"):
                return JobState(JobStatus.FAILED.value, None, stop["message"], failure=JobFailure.INTERRUPTION)
            return JobState(JobStatus.STOPPED.value, None, "stopped")
        if exit_status is None and _rebooted(process):
            return JobState(JobStatus.FAILED.value, None, "the machine restarted while the job ran",
                            failure=JobFailure.INTERRUPTION)
        if exit_status is None:
            return JobState(JobStatus.FAILED.value, None, "the job's processes were killed before it exited",
                            failure=JobFailure.ERROR)
        if exit_status == 0:
            return JobState(JobStatus.DONE.value, 0, "exited with status 0")
        return JobState(JobStatus.FAILED.value, exit_status, f"exited with status {exit_status}",
                        failure=JobFailure.ERROR)

    @staticmethod
    def _not_started(folder: Path) -> JobState:
        if (error := read_json(folder / "start_error.json")) is not None:
            return JobState(JobStatus.FAILED.value, None, f"could not start: {error['error']}",
                            failure=JobFailure.ERROR)
        if time.time() - folder.stat().st_mtime < START_TIMEOUT_SECONDS:
            return JobState(JobStatus.RUNNING.value, None)  # its worker is starting it right now
        return JobState(JobStatus.FAILED.value, None, "the worker starting the job died before it started",
                        failure=JobFailure.ERROR)

    @staticmethod
    def _clean_up(folder: Path, process: dict | None) -> None:
        """Once the job ended, kill what it left running in its group (once: the group id may be reused)."""
        marker = folder / "cleaned"
        if process is None or marker.exists():
            return
        _signal(process, signal.SIGKILL)
        marker.touch()

    # --- stop ----------------------------------------------------------------------------------

    def stop_job(self, *, workload_id: str) -> None:
        self._request_stop(self._folder(workload_id))

    def stop_jobs(self, *, workload_ids: list[str]) -> dict[str, None | DriverError]:
        """SIGTERM every group at once, wait up to ``STOP_WAIT_SECONDS`` for them, SIGKILL the rest."""
        results: dict[str, None | DriverError] = {}
        groups: dict[int, dict] = {}
        for workload_id in workload_ids:
            try:
                process = self._request_stop(self._folder(workload_id))
            except DriverError as err:
                results[workload_id] = err
                continue
            results[workload_id] = None
            if process is not None:
                groups[process["pgid"]] = process
        self._finish_stops(groups)
        return results

    def stop_instance_jobs(self, instance_id: str) -> None:
        """Stop every job started on the instance (it is being terminated): they fail as interrupted."""
        groups: dict[int, dict] = {}
        for folder in sorted(self.jobs_dir.iterdir()) if self.jobs_dir.is_dir() else []:
            job = read_json(folder / "job.json") if folder.is_dir() else None
            if job is not None and job["instance_id"] == instance_id and _read_exit_status(folder) is None:
                message = f"instance {instance_id} was terminated"
                if (process := self._request_stop(folder, message=message, interruption=True)) is not None:
                    groups[process["pgid"]] = process
        self._finish_stops(groups)

    def _request_stop(self, folder: Path, *, message: str = "stopped", interruption: bool = False) -> dict | None:
        """SIGTERM the job the first time (recording the SIGKILL deadline), SIGKILL it past the deadline;
        its process if it still runs, else None (a finished job is left as it ended)."""
        if self._state(folder).finished:
            return None
        stop = read_json(folder / "stop.json")
        if stop is None:
            stop = {"requested_at": time.time(), "kill_after": time.time() + STOP_GRACE_SECONDS, "message": message,
                    "interruption": interruption}
            write_json(folder / "stop.json", stop)
            sig = signal.SIGTERM
        else:
            sig = signal.SIGKILL if time.time() >= stop["kill_after"] else 0
        process = self._process(folder)
        if process is not None and sig:
            _signal(process, sig)
        return process

    @staticmethod
    def _finish_stops(groups: dict[int, dict]) -> None:
        stubborn = local_host.wait_for_groups(set(groups), STOP_WAIT_SECONDS)
        for pgid in stubborn:
            _signal(groups[pgid], signal.SIGKILL)
        local_host.wait_for_groups(stubborn, KILL_WAIT_SECONDS)

    # --- logs ----------------------------------------------------------------------------------

    def job_logs(self, *, workload_id: str, tail: int | None = None) -> list[str]:
        """The job's stdout and stderr lines, oldest first (the last ``tail`` only, if given)."""
        path = self._folder(workload_id) / "output.log"
        try:
            with open(path, "rb") as log:
                lines = collections.deque(log, maxlen=tail) if tail else list(log)
        except FileNotFoundError:
            return []
        return [line.decode("utf-8", errors="replace").rstrip("\r\n") for line in lines]


def _read_pid(folder: Path) -> int | None:
    try:
        text = (folder / "pid").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _rebooted(process: dict | None) -> bool:
    return bool(process and process["boot_id"]) and process["boot_id"] != local_host.boot_id()


def _signal(process: dict, sig: int) -> None:
    """Signal the job's group, unless its id may now belong to someone else (another boot, a reused pid)."""
    if local_host.owns_group(process["pgid"], process["starttime"], process["boot_id"]):
        local_host.signal_group(process["pgid"], sig)
