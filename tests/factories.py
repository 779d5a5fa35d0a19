"""factory_boy factories for every model (they write rows directly; services are tested separately)."""

import factory
from django.contrib.auth import get_user_model

from backends.models import Backend
from fleets.models import Fleet, Instance, InstanceStatus
from fleets.specs import parse_fleet_spec
from projects.models import Membership, Project
from runs.models import Job, Run
from volumes.models import Volume, VolumeStatus


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"project-{n}")


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    project = factory.SubFactory(ProjectFactory)
    user = factory.SubFactory(UserFactory)
    role = "user"


class BackendFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Backend

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"backend-{n}")
    type = "sim"
    config = factory.LazyFunction(dict)


class FleetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Fleet

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"fleet-{n}")
    spec = factory.LazyAttribute(lambda o: parse_fleet_spec({"type": "fleet", "name": o.name, "nodes": 1}))
    status = "active"


class InstanceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Instance

    fleet = factory.SubFactory(FleetFactory)
    project = factory.LazyAttribute(lambda o: o.fleet.project)
    backend = factory.SubFactory(BackendFactory, project=factory.SelfAttribute("..project"))
    instance_num = factory.Sequence(lambda n: n)
    name = factory.LazyAttribute(lambda o: f"{o.fleet.name}-{o.instance_num}")
    region = "eu-west-1"
    availability_zone = "eu-west-1a"
    instance_type = "gpu-8xh100"
    status = InstanceStatus.IDLE
    total_blocks = 8


class VolumeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Volume

    project = factory.SubFactory(ProjectFactory)
    backend = factory.SubFactory(BackendFactory, project=factory.SelfAttribute("..project"))
    name = factory.Sequence(lambda n: f"volume-{n}")
    region = "eu-west-1"
    size_gb = 100
    volume_id = factory.Sequence(lambda n: f"vol-{n:08d}")
    status = VolumeStatus.ACTIVE


class RunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Run

    project = factory.SubFactory(ProjectFactory)
    name = factory.Sequence(lambda n: f"run-{n}")
    type = "task"
    spec = factory.LazyAttribute(lambda o: {"type": o.type, "name": o.name, "commands": ["true"]})


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Job

    run = factory.SubFactory(RunFactory)
    project = factory.LazyAttribute(lambda o: o.run.project)
    job_num = 0
    replica_num = 0
    name = factory.LazyAttribute(lambda o: f"{o.run.name}-{o.job_num}-{o.replica_num}")
