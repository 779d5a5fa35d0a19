import django_filters
from rest_framework import mixins, status, viewsets
from rest_framework.response import Response

from core.models import Event
from projects import services
from projects.api.base import ProjectScopedViewSet
from projects.api.serializers import EventSerializer, ProjectSerializer
from projects.models import Project
from projects.selectors import projects_visible_to


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
