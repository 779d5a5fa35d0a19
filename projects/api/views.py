import django_filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.response import Response
from rest_framework.views import APIView

from fleets.api.serializers import FleetSerializer
from projects import services
from projects.api.base import ProjectScopedViewSet, project_for_request
from projects.api.serializers import ApplyResultSerializer, EventSerializer, ProjectSerializer
from projects.apply import apply_configuration
from projects.models import Event, Project
from projects.selectors import projects_visible_to
from runs.api.serializers import RunSerializer
from runs.selectors import runs_with_replica_counts
from volumes.api.serializers import VolumeSerializer


class ProjectViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Projects the caller is a member of (staff: all). Whoever creates a project becomes its admin."""

    serializer_class = ProjectSerializer
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Project.objects.none()
        return projects_visible_to(self.request.user).order_by("name")

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        project = services.create_project(name=serializer.validated_data["name"], owner=request.user)
        return Response(self.get_serializer(project).data, status=status.HTTP_201_CREATED)


class EventFilter(django_filters.FilterSet):
    class Meta:
        model = Event
        fields = ["resource_type", "resource_name", "kind"]


class EventViewSet(mixins.ListModelMixin, ProjectScopedViewSet):
    """The project's event log, newest first."""

    serializer_class = EventSerializer
    filterset_class = EventFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Event.objects.none()
        return Event.objects.filter(project=self.project)


RESOURCE_SERIALIZERS = {"fleet": FleetSerializer, "volume": VolumeSerializer}


def _serialize_resource(result) -> dict | None:
    if result.resource is None or result.resource.pk is None:
        return None
    if result.type in RESOURCE_SERIALIZERS:
        return RESOURCE_SERIALIZERS[result.type](result.resource).data
    run = runs_with_replica_counts().get(pk=result.resource.pk)
    return RunSerializer(run).data


class ApplyView(APIView):
    """Apply a dstack configuration file (YAML or JSON): create or update a fleet, volume or run."""

    # The body is read raw: YAML has no DRF parser, and parse errors must name the problem.
    parser_classes = []

    @extend_schema(
        request={"application/yaml": OpenApiTypes.STR, "application/json": OpenApiTypes.OBJECT},
        parameters=[OpenApiParameter("dry_run", bool, description="say what would change, change nothing")],
        responses={200: ApplyResultSerializer, 202: ApplyResultSerializer},
    )
    def post(self, request, project: str):
        project_obj, _ = project_for_request(request, project)
        dry_run = request.query_params.get("dry_run", "").lower() in ("1", "true", "yes")
        result = apply_configuration(project=project_obj, body=request.body, content_type=request.content_type,
                                     user=request.user, dry_run=dry_run)
        changed = not dry_run and result.action != "unchanged"
        data = {"type": result.type, "name": result.name, "action": result.action, "dry_run": dry_run,
                "changes": result.changes, "spec": result.spec,
                "resource": None if dry_run else _serialize_resource(result)}
        return Response(data, status=status.HTTP_202_ACCEPTED if changed else status.HTTP_200_OK)
