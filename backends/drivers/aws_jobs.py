"""Workloads of the ``aws`` driver through AWS Systems Manager Run Command: the ``AwsJobs`` mixin.

A workload is one ``AWS-RunShellScript`` command sent to one instance; its id is
``<instance id>/<command id>``. The SSM agent preinstalled on Amazon Linux runs it as root, in SSM's
own working directory, so the instance needs an instance profile with ``AmazonSSMManagedInstanceCore``
(the config's ``instance_profile``) and a route to the SSM endpoints. Guarantees beyond the interface:

* The script (``job_script``) exports the env (values quoted with ``shlex.quote``), mounts each network
  volume, links each instance volume, then runs the commands under ``set -e``: in order, and the first
  failing one ends the script with its status. A network volume is found as the NVMe device named after
  its id (Nitro), else as the device it was attached as (or its ``xvd`` name), waiting up to 60 s for
  it to show up; it is formatted ext4 only when ``blkid`` positively reports no filesystem on it (any
  other ``blkid`` failure fails the job and leaves the volume alone), and unmounted when the script
  exits. A command cancelled by SSM gets no chance to unmount: the detach may then need its force.
* SSM has no client token. A start with one writes ``stackyard <token> <job name>`` as the command's
  comment and first looks for a command of the instance with that comment (``ListCommands``): a start
  retried after a lost reply answers the first command. It is a check then a send, not an atomic
  token as EC2's: the job loop's leases keep two workers from starting one job at once.
* A start refuses, before sending anything: readiness probes (the control plane cannot reach the
  instance to run them, and reporting them passing would be a lie), a bad env name, a network volume
  not attached to the instance. An instance SSM does not know (``InvalidInstanceId``) is transient
  for ``REGISTER_SECONDS`` after its launch (the agent is registering), then fatal (no instance
  profile, or no route to SSM).
* Polls read ``GetCommandInvocation`` (one call per workload: SSM has no read of many invocations by
  id). ``Pending``, ``InProgress``, ``Delayed`` and ``Cancelling`` are running; ``Success`` is done;
  ``Cancelled`` is stopped; ``Failed`` is failed with its exit status (``error``). A command that
  never ran (undelivered, timed out before it started) or an invocation SSM does not list is an
  ``interruption`` when the instance is gone, else an ``error`` (or, for a missing invocation, a
  ``TransientError``: SSM lists a command a moment after it was sent). A script killed at SSM's
  execution timeout (``EXECUTION_TIMEOUT``, 48 h, the most ``AWS-RunShellScript`` allows) fails.
* A stop is ``CancelCommand``, asked only while the command runs: stopping a finished one is a no-op.
  SSM's cancel is best effort (the agent kills the script's process).
* Logs are the invocation's stdout lines, then its stderr lines (SSM keeps them apart, so their
  interleaving is lost). SSM keeps only the first 24,000 characters of each, and may have none of it
  until the command has ended; a cut stream ends with a line saying so.
"""

from __future__ import annotations

import datetime
import re
import shlex

from botocore.exceptions import ClientError

from backends.drivers.aws_calls import aws_call, error_code
from backends.drivers.base import (
    DriverError,
    FatalError,
    InstanceState,
    JobFailure,
    JobLaunch,
    JobState,
    JobStatus,
    NotFoundError,
    TransientError,
)

DOCUMENT = "AWS-RunShellScript"
EXECUTION_TIMEOUT = 172800  # seconds: AWS-RunShellScript's maximum (its default is one hour)
DELIVERY_TIMEOUT = 3600  # seconds SSM keeps trying to hand the command to the instance's agent
REGISTER_SECONDS = 600  # how long after its launch an instance's SSM agent may still be registering
OUTPUT_LIMIT = 24000  # SSM keeps the first 24,000 characters of stdout and of stderr
COMMENT_LIMIT = 100  # SSM's longest comment
PROBES_UNSUPPORTED = "http probes are not supported on aws yet"
RUNNING = frozenset({"Pending", "InProgress", "Delayed", "Cancelling"})
MISSING_CODES = frozenset({"InvocationDoesNotExist", "InvalidCommandId"})
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
WORKLOAD_ID = re.compile(r"(i-[0-9a-f]{8,17})/([0-9a-f-]{36})")

# Shell functions of every script: the device of an attached EBS volume, and failing with a message.
PRELUDE = [
    'stackyard_fail() { echo "stackyard: $*" >&2; exit 1; }',
    "stackyard_device() {  # $1: the device the volume was attached as, $2: the volume id",
    '  for _ in $(seq 60); do',
    '    for dev in "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$(echo "$2" | tr -d -)" "$1" '
    '"/dev/xvd${1#/dev/sd}"; do',
    '      if [ -b "$dev" ]; then echo "$dev"; return 0; fi',
    "    done",
    "    sleep 1",
    "  done",
    "  return 1",
    "}",
    "stackyard_mount() {  # $1: the device, $2: the volume id, $3: the path",
    '  dev=$(stackyard_device "$1" "$2") || stackyard_fail "volume $2 ($1) did not show up on this instance"',
    '  blkid "$dev" >/dev/null; found=$?',
    '  if [ "$found" -eq 2 ]; then mkfs.ext4 -q "$dev" || stackyard_fail "could not format volume $2"',
    '  elif [ "$found" -ne 0 ]; then stackyard_fail "blkid $dev failed ($found): volume $2 left as it is"; fi',
    '  mkdir -p "$3" && mount "$dev" "$3" || stackyard_fail "could not mount volume $2 at $3"',
    "}",
]


def job_script(launch: JobLaunch) -> list[str]:
    """The lines of the launch's ``AWS-RunShellScript`` script; ``FatalError`` for a bad env name or mount."""
    q = shlex.quote
    lines = list(PRELUDE)
    for name, value in launch.env.items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise FatalError(f"job {launch.job_name}: {name!r} is not a usable environment variable name")
        lines.append(f"export {name}={q('' if value is None else str(value))}")
    mounted: list[str] = []
    for mount in launch.mounts:
        path = mount.get("path") if isinstance(mount, dict) else None
        if not isinstance(path, str) or not path.startswith("/"):
            raise FatalError(f"job {launch.job_name}: mount {mount!r} has no absolute path")
        if mount.get("volume_id") and mount.get("device_name"):
            lines.append(f"stackyard_mount {q(mount['device_name'])} {q(mount['volume_id'])} {q(path)}")
            mounted.insert(0, path)
            # Reset after each mount: the script's exit unmounts exactly what it mounted, newest first.
            lines.append(f"trap {q('; '.join(f'umount {q(p)}' for p in mounted))} EXIT")
        elif isinstance(mount.get("instance_path"), str) and mount["instance_path"].startswith("/"):
            source, parent = mount["instance_path"], path.rsplit("/", 1)[0] or "/"
            failure = q(f"could not link {path} to {source}")
            lines.append(f"mkdir -p {q(source)} {q(parent)} && ln -sfT {q(source)} {q(path)} "
                         f"|| stackyard_fail {failure}")
        else:
            raise FatalError(f"job {launch.job_name}: mount {mount!r} needs a volume with its device, or an "
                             f"absolute instance_path")
    return [*lines, "set -e", *launch.commands]


def comment_of(launch: JobLaunch) -> str:
    """The command's comment: the marker a retried start looks for, and the job's name for operators."""
    marker = f"stackyard {launch.client_token} {launch.job_name}" if launch.client_token else \
        f"stackyard {launch.job_name}"
    return marker[:COMMENT_LIMIT]


def _parse(workload_id: str) -> tuple[str, str]:
    match = WORKLOAD_ID.fullmatch(workload_id or "")
    if match is None:
        raise NotFoundError(f"no aws workload {workload_id!r} (ids are <instance id>/<command id>)")
    return match.group(1), match.group(2)


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class AwsJobs:
    """The job calls of ``AwsDriver``; see the module docstring.

    A mixin: it relies on the driver for ``client``, ``locate``, ``describe_instance``, ``instance_states``
    and ``_describe``.
    """

    # --- start ---------------------------------------------------------------------------------

    def start_job(self, *, job_name: str, instance_id: str, commands: list[str], env: dict,
                  mounts: list | None = None) -> str:
        return self.start_launch(JobLaunch(job_name, instance_id, list(commands), dict(env), mounts=list(mounts or [])))

    @aws_call
    def start_launch(self, launch: JobLaunch) -> str:
        if launch.probes:
            raise FatalError(PROBES_UNSUPPORTED)
        script = job_script(launch)
        region = self._region_of(launch.instance_id)
        ssm, comment = self.client(region, "ssm"), comment_of(launch)
        if launch.client_token and (found := self._command_with(ssm, launch.instance_id, comment)):
            return f"{launch.instance_id}/{found}"
        self._check_mounts(launch, region)
        try:
            command = ssm.send_command(
                InstanceIds=[launch.instance_id], DocumentName=DOCUMENT, Comment=comment,
                TimeoutSeconds=DELIVERY_TIMEOUT,
                Parameters={"commands": script, "executionTimeout": [str(EXECUTION_TIMEOUT)]})["Command"]
        except ClientError as err:
            if error_code(err) == "InvalidInstanceId":
                raise self._not_managed(launch.instance_id, region) from err
            raise
        return f"{launch.instance_id}/{command['CommandId']}"

    def _region_of(self, instance_id: str) -> str:
        region = self.locate("instance", instance_id)
        if region is None:
            raise NotFoundError(f"instance {instance_id!r} not found in {', '.join(self.config['regions'])}")
        return region

    @staticmethod
    def _command_with(ssm, instance_id: str, comment: str) -> str | None:
        """The id of the instance's oldest ``AWS-RunShellScript`` command with that comment, if any."""
        found, token = [], None
        while True:
            answer = ssm.list_commands(InstanceId=instance_id, MaxResults=50,
                                       Filters=[{"key": "DocumentName", "value": DOCUMENT}],
                                       **({"NextToken": token} if token else {}))
            found += [c for c in answer.get("Commands", []) if c.get("Comment") == comment]
            token = answer.get("NextToken")
            if not token:
                break
        oldest = min(found, key=lambda c: c.get("RequestedDateTime") or 0, default=None)
        return oldest["CommandId"] if oldest else None

    def _check_mounts(self, launch: JobLaunch, region: str) -> None:
        """``FatalError`` unless every network volume the launch mounts is attached to its instance."""
        volume_ids = [m["volume_id"] for m in launch.mounts if isinstance(m, dict) and m.get("volume_id")]
        if not volume_ids:
            return
        volumes = {v["VolumeId"]: v for v in self._describe("volume", region, [
            {"Name": "volume-id", "Values": volume_ids}])}
        for volume_id in volume_ids:
            attachments = volumes.get(volume_id, {}).get("Attachments", [])
            if not any(a.get("InstanceId") == launch.instance_id and a.get("State") == "attached"
                       for a in attachments):
                raise FatalError(f"job {launch.job_name}: volume {volume_id} is not attached to "
                                 f"{launch.instance_id}")

    def _not_managed(self, instance_id: str, region: str) -> DriverError:
        """The error of a send to an instance SSM does not know: registering still, or never will."""
        instance = self.describe_instance(instance_id, region)
        state = instance["State"]["Name"] if instance else "gone"
        if state not in ("pending", "running"):
            return FatalError(f"instance {instance_id} is {state}")
        launched = instance.get("LaunchTime")
        age = (datetime.datetime.now(datetime.UTC) - launched).total_seconds() if launched else 0
        advice = (f"instance {instance_id} is not managed by SSM: its instance profile needs "
                  f"AmazonSSMManagedInstanceCore (config key instance_profile) and a route to SSM")
        if age < REGISTER_SECONDS:
            return TransientError(f"{advice} (launched {int(age)} s ago: its agent may still be registering)")
        return FatalError(advice)

    # --- state ---------------------------------------------------------------------------------

    def _invocation(self, workload_id: str) -> tuple[str, str, dict | None]:
        """``(instance id, region, invocation)``; the invocation is None when SSM does not list it."""
        instance_id, command_id = _parse(workload_id)
        region = self._region_of(instance_id)
        try:
            invocation = self.client(region, "ssm").get_command_invocation(CommandId=command_id,
                                                                            InstanceId=instance_id)
        except ClientError as err:
            if error_code(err) not in MISSING_CODES:
                raise
            invocation = None
        return instance_id, region, invocation

    @aws_call
    def poll_job(self, *, workload_id: str) -> JobState:
        try:
            instance_id, _, invocation = self._invocation(workload_id)
        except NotFoundError:
            if WORKLOAD_ID.fullmatch(workload_id or ""):  # a well-formed id whose instance no region has
                return JobState(JobStatus.FAILED.value, None, "its instance is gone", failure=JobFailure.INTERRUPTION)
            raise
        if invocation is None:
            return self._without_run(instance_id, "SSM does not list the command",
                                     TransientError(f"SSM does not list {workload_id} yet; asking again"))
        return self._state(instance_id, invocation)

    def _state(self, instance_id: str, invocation: dict) -> JobState:
        status, details = invocation.get("Status", ""), invocation.get("StatusDetails", "")
        code = invocation.get("ResponseCode", -1)
        if status in RUNNING:
            return JobState(JobStatus.RUNNING.value, None)
        if status == "Success":
            return JobState(JobStatus.DONE.value, 0, "exited with status 0")
        if status == "Cancelled":
            return JobState(JobStatus.STOPPED.value, None, "the SSM command was cancelled")
        if details == "ExecutionTimedOut":
            return JobState(JobStatus.FAILED.value, None, f"killed at SSM's execution timeout "
                            f"({EXECUTION_TIMEOUT // 3600} h)", failure=JobFailure.ERROR)
        if code is None or code < 0:  # it never ran, or its end was never reported
            return self._without_run(instance_id, f"SSM could not run it ({status}: {details})")
        why = _last_line(invocation.get("StandardErrorContent", ""))
        return JobState(JobStatus.FAILED.value, code, f"exited with status {code}" + (f": {why}" if why else ""),
                        failure=JobFailure.ERROR)

    def _without_run(self, instance_id: str, what: str, alive: DriverError | None = None) -> JobState:
        """The state of a command SSM has no outcome of: an interruption if its instance is gone, else
        ``alive`` raised (or an error)."""
        state = self.instance_states(instance_ids=[instance_id])[instance_id]
        if isinstance(state, NotFoundError) or state in (InstanceState.INTERRUPTED, InstanceState.TERMINATED):
            return JobState(JobStatus.FAILED.value, None, f"{what}: instance {instance_id} is gone",
                            failure=JobFailure.INTERRUPTION)
        if isinstance(state, DriverError):
            raise state
        if alive is not None:
            raise alive
        return JobState(JobStatus.FAILED.value, None, what, failure=JobFailure.ERROR)

    # --- stop ----------------------------------------------------------------------------------

    @aws_call
    def stop_job(self, *, workload_id: str) -> None:
        try:
            instance_id, region, invocation = self._invocation(workload_id)
        except NotFoundError:
            if WORKLOAD_ID.fullmatch(workload_id or ""):
                return  # its instance is gone: nothing runs there any more
            raise
        if invocation is not None and invocation.get("Status") not in RUNNING - {"Cancelling"}:
            return  # finished (or being cancelled): nothing to stop
        try:
            self.client(region, "ssm").cancel_command(CommandId=_parse(workload_id)[1], InstanceIds=[instance_id])
        except ClientError as err:
            if error_code(err) == "InvalidCommandId":
                raise NotFoundError(f"SSM has no command {workload_id}") from err
            if error_code(err) != "InvalidInstanceId":  # that one: the instance left SSM, nothing runs there
                raise

    # --- logs ----------------------------------------------------------------------------------

    @aws_call
    def job_logs(self, *, workload_id: str, tail: int | None = None) -> list[str]:
        """The invocation's stdout lines, then its stderr lines (the last ``tail`` only, if given)."""
        _, _, invocation = self._invocation(workload_id)
        if invocation is None:
            raise NotFoundError(f"SSM does not list {workload_id}")
        lines: list[str] = []
        for stream, key in (("stdout", "StandardOutputContent"), ("stderr", "StandardErrorContent")):
            text = invocation.get(key) or ""
            lines += text.splitlines()
            if len(text) >= OUTPUT_LIMIT:
                lines.append(f"[stackyard: SSM keeps only the first {OUTPUT_LIMIT} characters of {stream}; "
                             f"the rest is not shown]")
        return lines[-tail:] if tail else lines
