import django_filters
from django.db.models import Prefetch
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.response import Response

from core.applying import typed_document
from fleets import services
from fleets.api.serializers import FleetSerializer, InstanceSerializer
from fleets.models import Fleet, Instance, InstanceStatus
from fleets.specs import parse_fleet_spec
from projects.api.base import ProjectScopedViewSet


class FleetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedViewSet):
    """Fleets. ``POST`` takes a dstack fleet configuration (as JSON); ``DELETE`` terminates."""

    serializer_class = FleetSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Fleet.objects.none()
        instances = Prefetch("instances", queryset=Instance.objects.only("id", "fleet_id", "name"))
        return Fleet.objects.filter(project=self.project).prefetch_related(instances)

    @extend_schema(request=dict, responses={202: FleetSerializer})
    def create(self, request, *args, **kwargs):
        spec = parse_fleet_spec(typed_document(request.data, "fleet"))
        result = services.apply_fleet(project=self.project, spec=spec, actor=self.actor)
        return Response(self.get_serializer(result.resource).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses={202: FleetSerializer, 204: None})
    def destroy(self, request, *args, **kwargs):
        fleet = services.delete_fleet(fleet=self.get_object(), actor=self.actor)
        if fleet.pk is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(self.get_serializer(fleet).data, status=status.HTTP_202_ACCEPTED)


class InstanceFilter(django_filters.FilterSet):
    fleet = django_filters.CharFilter(field_name="fleet__name")
    backend = django_filters.CharFilter(field_name="backend__name")
    status = django_filters.ChoiceFilter(choices=InstanceStatus.choices)

    class Meta:
        model = Instance
        fields = ["fleet", "backend", "status"]


class InstanceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedViewSet):
    """Instances of the project's fleets, with their block usage."""

    serializer_class = InstanceSerializer
    filterset_class = InstanceFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Instance.objects.none()
        return Instance.objects.filter(project=self.project).select_related("fleet", "backend")

    @extend_schema(request=None, responses={202: InstanceSerializer})
    @action(detail=True, methods=["post"])
    def terminate(self, request, *args, **kwargs):
        instance = self.get_object()
        services.request_instance_termination(instance=instance, reason="terminated_by_user", actor=self.actor)
        instance.refresh_from_db()
        return Response(self.get_serializer(instance).data, status=status.HTTP_202_ACCEPTED)
