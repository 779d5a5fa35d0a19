"""GET .../runs/{name}/logs/: a job's output from any driver; a local backend runs real commands."""

import time

import pytest

from runs import logs
from runs.models import Job, Run
from tests import factories
from tests.backends.test_local_driver import kill_jobs

pytestmark = pytest.mark.django_db

RUNS = "/api/v1/projects/main/runs/"
SMALL = "resources: {cpu: 1.., memory: 1GB.., disk: 1GB..}\n"
LOCAL_FLEET = "type: fleet\nname: here\nbackends: [local]\nnodes: 1\n" + SMALL
SIM_FLEET = "type: fleet\nname: cloud\nbackends: [sim]\nnodes: 1\n" + SMALL


def task(name: str, commands: list[str], fleet: str) -> str:
    return f"type: task\nname: {name}\nfleets: [{fleet}]\ncommands: {commands!r}\n" + SMALL


@pytest.fixture
def local_backend(project, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    yield factories.BackendFactory(project=project, name="local", type="local")
    kill_jobs(tmp_path)


@pytest.fixture
def run_to(reconcile):
    """Drive the reconcilers until the run's job reaches a status in ``wanted`` (real processes take time)."""

    def drive(name: str, wanted=("done", "failed", "terminated"), timeout: float = 20.0) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            reconcile()
            job = Job.objects.filter(run__name=name).order_by("-submission_num").first()
            if job is not None and job.status in wanted:
                return job
            assert time.monotonic() < deadline, f"job of {name} is {job and job.status}"
            time.sleep(0.1)

    return drive


def test_a_task_on_the_local_backend_runs_its_commands_and_shows_their_output(local_backend, apply, api, run_to):
    apply(LOCAL_FLEET)
    apply(task("hello", ["echo hello; exit 3"], "here"))
    job = run_to("hello")
    assert (job.status, job.exit_status, job.termination_reason) == ("failed", 3, "exited_with_error")
    run_to("hello", wanted=("failed",))
    assert Run.objects.get(name="hello").status == "failed"
    response = api.get(RUNS + "hello/logs/")
    assert response.status_code == 200
    assert response.json() == {"job": "hello-0-0", "lines": ["hello"]}


def test_the_sim_answers_its_synthetic_lines_and_tail_keeps_the_last(sim_backend, apply, api, run_to):
    apply(SIM_FLEET)
    apply(task("train", ["echo one", "echo two"], "cloud"))
    run_to("train", wanted=("running",))
    lines = api.get(RUNS + "train/logs/?job=train-0-0").json()["lines"]
    assert lines[0].startswith("[sim] train-0-0 started") and lines[1:] == ["$ echo one", "$ echo two"]
    assert api.get(RUNS + "train/logs/?tail=1").json()["lines"] == ["$ echo two"]
    assert api.get(RUNS + "train/logs/?tail=0").json()["lines"] == []


def test_a_job_that_never_started_has_no_lines(project, sim_backend, api):
    api.post(RUNS, {"type": "task", "name": "waiting", "commands": ["x"]}, format="json")
    assert api.get(RUNS + "waiting/logs/").json() == {"job": "waiting-0-0", "lines": []}


@pytest.mark.parametrize("query,field", [("tail=-1", "tail"), ("tail=ten", "tail"), (f"tail={logs.MAX_TAIL + 1}",
                                          "tail"), ("tail=", "tail"), ("follow=maybe", "follow"), ("job=", "job")])
def test_bad_parameters_are_a_400_naming_them(project, api, query, field):
    factories.RunFactory(project=project, name="r1")
    response = api.get(RUNS + f"r1/logs/?{query}")
    assert response.status_code == 400 and response.json()["field"] == field, response.content


def test_an_unknown_job_or_run_is_a_404(project, sim_backend, api):
    api.post(RUNS, {"type": "task", "name": "r1", "commands": ["x"]}, format="json")
    assert api.get(RUNS + "r1/logs/?job=r1-0-7").status_code == 404
    assert api.get(RUNS + "nothing/logs/").status_code == 404


def test_follow_streams_new_lines_until_the_job_ends(local_backend, apply, api, run_to, monkeypatch):
    monkeypatch.setattr(logs, "FOLLOW_POLL_SECONDS", 0.1)
    apply(LOCAL_FLEET)
    apply(task("slow", ["echo one", "sleep 1", "echo two"], "here"))
    run_to("slow", wanted=("running", "done"))
    started = time.monotonic()
    response = api.get(RUNS + "slow/logs/?follow=true")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    assert b"".join(response.streaming_content).decode() == "one\ntwo\n"
    assert time.monotonic() - started < 10  # it ended with the job, not at the cap


def test_follow_stops_at_its_cap_while_the_job_runs(sim_backend, apply, api, run_to, monkeypatch):
    monkeypatch.setattr(logs, "FOLLOW_POLL_SECONDS", 0.05)
    apply(SIM_FLEET)
    apply(task("serve", ["echo up"], "cloud"))
    job = run_to("serve", wanted=("running",))
    lines = logs.follow_job_logs(job=job, tail=1, seconds=0.3)
    assert list(lines) == ["$ echo up"]
