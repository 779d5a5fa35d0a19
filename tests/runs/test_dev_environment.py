"""Dev environments: one job that runs its ``init`` and then until stopped (or idle past its
``inactivity_duration``), through the same stop and volume paths as a task."""

import datetime

import pytest
from django.urls import reverse
from django.utils import timezone

from backends.models import SimFault, SimJob
from core.models import Event
from runs.models import RUN_FINISHED_STATES, Job, Run
from volumes.models import VolumeAttachment

pytestmark = pytest.mark.django_db

P = "/api/v1/projects/main"
FLEET = "type: fleet\nname: gpu\nnodes: 0..2\nbackends: [sim]\nresources: {gpu: A100:1}\n"
DEV = ("type: dev-environment\nname: dev\nide: vscode\ninit: [pip install -r requirements.txt, echo ready]\n"
       "inactivity_duration: 2h\nresources: {gpu: 1}\n")


def run_of(api, name: str = "dev") -> dict:
    return api.get(f"{P}/runs/{name}/").json()


def fault(api, **params) -> None:
    assert api.post(f"{P}/backends/sim/faults/", params, format="json").status_code == 201


def stop(api, name: str = "dev") -> None:
    assert api.post(f"{P}/runs/{name}/stop/", {"abort": False}, format="json").status_code == 202


@pytest.fixture
def fleet(sim_backend, apply, reconcile):
    apply(FLEET)
    reconcile()


def test_a_dev_environment_is_one_job_that_runs_its_init_until_stopped(fleet, api, apply, reconcile):
    body = apply(DEV)
    assert body["resource"]["type"] == "dev-environment"
    assert (body["resource"]["replicas"], body["resource"]["health"]) == (None, None)  # like a task
    reconcile()
    run = run_of(api)
    assert run["status"] == "running", run
    assert run["spec"]["inactivity_duration"] == 7200
    assert [j.name for j in Job.objects.filter(run__name="dev")] == ["dev-0-0"]
    # After its init, a dev environment stays up until it is stopped: the driver is told so.
    assert SimJob.objects.get(job_name="dev-0-0").commands == ["pip install -r requirements.txt", "echo ready",
                                                               "sleep infinity"]
    reconcile()  # nothing ends it: no sleep, no exit, nobody idle
    assert run_of(api)["status"] == "running"

    stop(api)
    reconcile()
    run = run_of(api)
    assert (run["status"], run["termination_reason"]) == ("terminated", "stopped_by_user"), run
    job = Job.objects.get(run__name="dev")
    assert (job.status, job.termination_reason) == ("terminated", "stopped_by_user")
    assert SimJob.objects.get(job_name="dev-0-0").state == "stopped"


def test_an_init_that_finishes_does_not_end_the_dev_environment(fleet, api, apply, reconcile):
    apply(DEV.replace("echo ready", "sleep 1"))
    reconcile()
    assert SimJob.objects.get(job_name="dev-0-0").finishes_at is None  # the init's sleep 1 is not the end
    SimJob.objects.filter(job_name="dev-0-0").update(started_at=timezone.now() - datetime.timedelta(hours=1))
    reconcile()
    assert run_of(api)["status"] == "running"
    assert SimJob.objects.get(job_name="dev-0-0").state == "running"


def test_a_dev_environment_without_init_runs_too(fleet, api, apply, reconcile):
    apply("type: dev-environment\nname: bare\nide: vscode\nresources: {gpu: 1}\n")
    reconcile()
    run = run_of(api, "bare")
    assert run["status"] == "running", run
    assert (run["spec"]["commands"], run["spec"]["inactivity_duration"]) == ([], None)


def test_runs_endpoint_accepts_a_dev_environment(fleet, api, reconcile):
    response = api.post(f"{P}/runs/", {"type": "dev-environment", "name": "dev", "ide": "vscode",
                                       "resources": {"gpu": 1}}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["type"] == "dev-environment"
    reconcile()
    assert run_of(api)["status"] == "running"


def test_its_volume_is_detached_before_it_ends(sim_backend, api, apply, reconcile):
    apply("type: fleet\nname: cpu\nnodes: 0..2\nbackends: [sim]\nresources: {cpu: 2, gpu: 0}\n")
    apply("type: volume\nname: home\nbackend: sim\nregion: eu-west-1\nsize: 10GB\n")
    reconcile()
    apply("type: dev-environment\nname: dev\nide: vscode\nresources: {cpu: 2, gpu: 0}\n"
          "volumes: [{name: home, path: /workspace}]\n")
    reconcile()
    assert run_of(api)["status"] == "running"
    assert VolumeAttachment.objects.get(volume__name="home").status == "attached"
    assert SimJob.objects.get(job_name="dev-0-0").mounts[0]["path"] == "/workspace"
    stop(api)
    reconcile()
    assert run_of(api)["status"] == "terminated"
    assert VolumeAttachment.objects.get(volume__name="home").status == "detached"


def test_inactive_past_inactivity_duration_stops_it(fleet, api, apply, reconcile):
    apply(DEV)
    reconcile()
    fault(api, kind="inactive", job="dev-0-0", seconds=7200)
    reconcile()
    run = run_of(api)
    assert run["status"] in RUN_FINISHED_STATES, run
    assert run["termination_reason"] == "inactivity_duration_exceeded", run
    assert "7200 s" in run["status_message"] and "inactivity_duration of 7200 s" in run["status_message"]
    event = Event.objects.filter(resource_type="run", resource_name="dev", kind="terminating").get()
    assert event.message.startswith("inactive for 7200 s")
    assert Job.objects.get(run__name="dev").status == "terminated"
    assert SimJob.objects.get(job_name="dev-0-0").state == "stopped"


def test_inactive_below_inactivity_duration_keeps_it_until_the_duration_is_reached(fleet, api, apply, reconcile):
    apply(DEV)
    reconcile()
    fault(api, kind="inactive", job="dev-0-0", seconds=3600)
    reconcile()
    assert run_of(api)["status"] == "running"
    # An hour later nobody attached yet: the sim's count grows from when the fault was added.
    SimFault.objects.filter(kind="inactive").update(created_at=timezone.now() - datetime.timedelta(seconds=3600))
    reconcile()
    run = run_of(api)
    assert run["termination_reason"] == "inactivity_duration_exceeded", run


def test_inactivity_unknown_or_off_never_stops_it(fleet, api, apply, reconcile):
    apply(DEV)  # the sim reports no inactivity without a fault: unknown is never idle
    apply("type: dev-environment\nname: forever\nide: vscode\ninactivity_duration: off\nresources: {gpu: 1}\n")
    reconcile()
    fault(api, kind="inactive", job="forever-0-0", seconds=10**6)
    reconcile()
    assert (run_of(api)["status"], run_of(api, "forever")["status"]) == ("running", "running")


def test_an_active_dev_environment_is_not_replaced_by_a_reapply(fleet, api, apply, reconcile):
    apply(DEV)
    reconcile()
    assert apply(DEV, expect=409)["code"] == "run_active"
    stop(api)
    reconcile()
    assert apply(DEV)["action"] == "replace"


def test_admin_filters_runs_by_dev_environment_type(admin_client, project):
    Run.objects.create(project=project, name="dev", type="dev-environment", spec={})
    Run.objects.create(project=project, name="train", type="task", spec={})
    url = reverse("admin:runs_run_changelist")
    page = admin_client.get(url).content.decode()
    assert "type__exact=dev-environment" in page  # offered by the list filter
    filtered = admin_client.get(url, {"type__exact": "dev-environment"}).content.decode()
    assert ">dev<" in filtered and ">train<" not in filtered


def test_an_idle_dev_environment_ends_terminated(fleet, api, apply, reconcile):
    apply(DEV)
    reconcile()
    fault(api, kind="inactive", job="dev-0-0", seconds=7200)
    reconcile()
    run = run_of(api)
    assert (run["status"], run["termination_reason"]) == ("terminated", "inactivity_duration_exceeded"), run
    assert "7200 s" in run["status_message"]
    job = Job.objects.get(run__name="dev")
    assert (job.status, job.termination_reason) == ("terminated", "inactivity_duration_exceeded")
