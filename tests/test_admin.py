"""The admin is usable by an operator and writes only through services."""

import pytest
from django.urls import reverse
from django.utils import timezone

from backends.models import Backend, SimFault, SimInstance, SimJob, SimVolume
from core.models import Event
from fleets.models import Fleet, Instance, InstanceStatus
from projects.models import Membership, Project
from runs.models import Job, JobStatus, Run, RunStatus
from tests import factories
from volumes.models import Volume, VolumeAttachment

pytestmark = pytest.mark.django_db

SECRET = "s3cr3t-plaintext-value"


def url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def action(admin_client, model, name: str, *objs, **extra):
    data = {"action": name, "_selected_action": [o.pk for o in objs], **extra}
    return admin_client.post(url(model, "changelist"), data, follow=True)


def page_text(response) -> str:
    return response.content.decode()


@pytest.fixture
def world(project, sim_backend, admin_user):
    """One row of every registered model."""
    factories.MembershipFactory(project=project, user=factories.UserFactory(username="bob"))
    Event.objects.create(project=project, resource_type="run", resource_name="r", kind="created")
    instance = factories.InstanceFactory(fleet=factories.FleetFactory(project=project), backend=sim_backend)
    volume = factories.VolumeFactory(project=project, backend=sim_backend)
    job = factories.JobFactory(run=factories.RunFactory(project=project), instance=instance)
    VolumeAttachment.objects.create(volume=volume, instance=instance, job=job)
    SimInstance.objects.create(backend=sim_backend, instance_id="i-1", name=instance.name, region="eu-west-1",
                               availability_zone="eu-west-1a", instance_type="cpu")
    SimVolume.objects.create(backend=sim_backend, volume_id="v-1", name=volume.name, region="eu-west-1",
                             availability_zone="eu-west-1a", size_gb=10)
    SimJob.objects.create(backend=sim_backend, workload_id="w-1", job_name=job.name, instance_id="i-1",
                          started_at=timezone.now())
    SimFault.objects.create(backend=sim_backend, kind="no_capacity", params={"region": "eu-west-1"})


MODELS = [Project, Membership, Event, Backend, SimInstance, SimVolume, SimJob, SimFault, Fleet, Instance, Volume,
          VolumeAttachment, Run, Job]


@pytest.mark.parametrize("model", [m for m in MODELS if m is not Membership], ids=lambda m: m.__name__)
def test_changelist_and_change_page_load(admin_client, world, model):
    assert admin_client.get(url(model, "changelist")).status_code == 200
    assert admin_client.get(url(model, "changelist"), {"q": "x"}).status_code == 200
    assert admin_client.get(url(model, "change", model.objects.first().pk)).status_code == 200


def test_memberships_are_inline_on_project(admin_client, world, project):
    response = admin_client.get(url(Project, "change", project.pk))
    assert "bob" in page_text(response)


def test_members_are_added_through_the_service(admin_client, project):
    carol = factories.UserFactory(username="carol")
    data = {"memberships-TOTAL_FORMS": "1", "memberships-INITIAL_FORMS": "0",
            "memberships-0-user": carol.pk, "memberships-0-role": "admin"}
    assert admin_client.post(url(Project, "change", project.pk), data).status_code == 302
    assert project.memberships.get(user=carol).role == "admin"
    assert Event.objects.filter(kind="member_added", message="carol as admin", actor="admin").exists()


def test_add_pages_load(admin_client, world):
    assert admin_client.get(url(Backend, "add")).status_code == 200
    assert admin_client.get(url(Project, "add")).status_code == 200


def test_project_is_created_through_the_service(admin_client, admin_user):
    response = admin_client.post(url(Project, "add"), {"name": "research"})
    assert response.status_code == 302
    project = Project.objects.get(name="research")
    assert project.memberships.get().user == admin_user
    assert Event.objects.filter(project=project, kind="created").exists()


# --- backends -------------------------------------------------------------------------------


def test_backend_change_page_never_shows_the_credentials(admin_client, sim_backend):
    sim_backend.credentials = {"token": SECRET}
    sim_backend.save()
    response = admin_client.get(url(Backend, "change", sim_backend.pk))
    assert response.status_code == 200
    assert SECRET not in page_text(response)
    assert sim_backend.credentials_encrypted not in page_text(response)


def test_backend_save_with_empty_credentials_keeps_them(admin_client, sim_backend):
    sim_backend.credentials = {"token": SECRET}
    sim_backend.save()
    response = admin_client.post(url(Backend, "change", sim_backend.pk),
                                 {"config": '{"regions": ["eu-west-1"]}', "credentials": ""})
    assert response.status_code == 302
    sim_backend.refresh_from_db()
    assert sim_backend.credentials == {"token": SECRET}
    assert sim_backend.config == {"regions": ["eu-west-1"]}
    assert Event.objects.filter(resource_name="sim", kind="updated", actor="admin").exists()


def test_backend_credentials_can_be_replaced(admin_client, sim_backend):
    admin_client.post(url(Backend, "change", sim_backend.pk), {"config": "{}", "credentials": '{"token": "new"}'})
    sim_backend.refresh_from_db()
    assert sim_backend.credentials == {"token": "new"}


def test_backend_is_created_through_the_service(admin_client, project):
    data = {"project": project.pk, "name": "sim2", "type": "sim", "config": "{}", "credentials": '{"k": "v"}'}
    assert admin_client.post(url(Backend, "add"), data).status_code == 302
    backend = Backend.objects.get(name="sim2")
    assert backend.credentials == {"k": "v"}
    assert Event.objects.filter(resource_name="sim2", kind="created").exists()


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("config", '{"bogus": 1}', "unknown sim config key"),
    ("type", "gce", "not one of the available choices"),
    ("name", "Bad_Name", "name"),
])
def test_backend_service_errors_are_form_errors(admin_client, project, field, value, expected):
    data = {"project": project.pk, "name": "sim2", "type": "sim", "config": "{}", field: value}
    response = admin_client.post(url(Backend, "add"), data)
    assert response.status_code == 200
    assert expected in str(response.context["adminform"].form.errors)
    assert not Backend.objects.filter(project=project).exists()


@pytest.fixture
def busy_backend(project, sim_backend):
    factories.InstanceFactory(fleet=factories.FleetFactory(project=project, name="gpu"), backend=sim_backend,
                              instance_num=0)
    factories.VolumeFactory(project=project, backend=sim_backend, name="data")
    return sim_backend


def test_delete_view_refuses_a_backend_in_use(admin_client, busy_backend):
    response = admin_client.post(url(Backend, "delete", busy_backend.pk), {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert Backend.objects.filter(pk=busy_backend.pk).exists()
    assert "gpu-0" in page_text(response)
    assert "data" in page_text(response)
    assert not Event.objects.filter(kind="deleted").exists()


def test_delete_selected_refuses_a_backend_in_use_and_deletes_nothing(admin_client, project, busy_backend):
    unused = factories.BackendFactory(project=project, name="spare")
    response = action(admin_client, Backend, "delete_selected", busy_backend, unused, post="yes")
    assert response.status_code == 200
    assert "gpu-0" in page_text(response)
    assert Backend.objects.filter(pk__in=[busy_backend.pk, unused.pk]).count() == 2


def test_delete_view_deletes_an_unused_backend(admin_client, sim_backend):
    SimInstance.objects.create(backend=sim_backend, instance_id="i-9", name="old", region="eu-west-1",
                               availability_zone="eu-west-1a", instance_type="cpu", state="terminated")
    assert admin_client.get(url(Backend, "delete", sim_backend.pk)).status_code == 200
    response = admin_client.post(url(Backend, "delete", sim_backend.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not Backend.objects.filter(pk=sim_backend.pk).exists()
    assert Event.objects.filter(resource_name="sim", kind="deleted", actor="admin").exists()


def test_delete_selected_deletes_unused_backends(admin_client, sim_backend):
    assert action(admin_client, Backend, "delete_selected", sim_backend).status_code == 200  # confirmation page
    action(admin_client, Backend, "delete_selected", sim_backend, post="yes")
    assert not Backend.objects.filter(pk=sim_backend.pk).exists()


def test_terminate_all_instances_action(admin_client, busy_backend):
    response = action(admin_client, Backend, "terminate_all_instances", busy_backend)
    assert "gpu-0" in page_text(response)
    assert Instance.objects.get(name="gpu-0").status == InstanceStatus.TERMINATING


# --- actions on fleets, instances, volumes and runs -----------------------------------------


def test_terminate_action_on_an_idle_instance(admin_client, sim_backend):
    instance = factories.InstanceFactory(backend=sim_backend, project=sim_backend.project)
    action(admin_client, Instance, "terminate", instance)
    instance.refresh_from_db()
    assert instance.status == InstanceStatus.TERMINATING
    assert Event.objects.filter(resource_name=instance.name, kind="terminating", actor="admin").exists()


def test_terminate_action_reports_an_instance_that_cannot_terminate(admin_client, sim_backend):
    instance = factories.InstanceFactory(backend=sim_backend, project=sim_backend.project, status="terminated")
    response = action(admin_client, Instance, "terminate", instance)
    assert response.status_code == 200
    assert "is terminated" in page_text(response)


def test_delete_fleet_action_terminates_its_instances(admin_client, sim_backend):
    instance = factories.InstanceFactory(backend=sim_backend, project=sim_backend.project)
    action(admin_client, Fleet, "delete_fleets", instance.fleet)
    instance.refresh_from_db()
    assert instance.status == InstanceStatus.TERMINATING
    assert Fleet.objects.get(pk=instance.fleet_id).status == "terminating"


def test_volume_actions_report_service_errors(admin_client, project, sim_backend):
    volume = factories.VolumeFactory(project=project, backend=sim_backend)
    instance = factories.InstanceFactory(backend=sim_backend, project=project)
    VolumeAttachment.objects.create(volume=volume, instance=instance, status="attached")

    response = action(admin_client, Volume, "delete_volumes", volume)
    assert response.status_code == 200
    assert instance.name in page_text(response)
    assert Volume.objects.get(pk=volume.pk).status == "active"

    action(admin_client, Volume, "force_detach", volume)
    assert volume.attachments.get().force is True


def test_stop_action_terminates_a_run_whose_jobs_have_no_instance(admin_client, project):
    run = factories.RunFactory(project=project, status=RunStatus.SUBMITTED)
    job = factories.JobFactory(run=run)
    action(admin_client, Run, "stop", run)
    run.refresh_from_db()
    job.refresh_from_db()
    assert run.status == RunStatus.TERMINATED
    assert run.termination_reason == "stopped_by_user"
    assert job.status == JobStatus.TERMINATED


def test_stop_action_on_a_finished_run_is_an_error_message(admin_client, project):
    run = factories.RunFactory(project=project, status=RunStatus.DONE)
    response = action(admin_client, Run, "abort", run)
    assert response.status_code == 200
    assert "already done" in page_text(response)


# --- query counts ---------------------------------------------------------------------------


def test_instance_changelist_uses_a_bounded_number_of_queries(admin_client, project, django_assert_max_num_queries):
    for _ in range(3):
        fleet = factories.FleetFactory(project=project)
        for _ in range(10):
            factories.InstanceFactory(fleet=fleet, backend=factories.BackendFactory(project=project))
    admin_client.get(url(Instance, "changelist"))  # warm the session
    with django_assert_max_num_queries(15):
        response = admin_client.get(url(Instance, "changelist"))
    assert response.status_code == 200
    assert "0/8 busy" in page_text(response)


def test_instance_list_shows_block_usage(admin_client, project, sim_backend):
    fleet = factories.FleetFactory(project=project, name="gpu8")
    factories.InstanceFactory(fleet=fleet, backend=sim_backend, instance_num=0, total_blocks=8, busy_blocks=6,
                              status="busy")
    response = admin_client.get(reverse("admin:fleets_instance_changelist"))
    assert response.status_code == 200
    assert "6/8 busy" in response.content.decode()
