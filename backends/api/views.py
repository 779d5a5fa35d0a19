from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.response import Response

from backends import orphans, services
from backends.api.serializers import (
    BackendSerializer,
    BackendUpdateSerializer,
    FaultSerializer,
    ProviderErrorSerializer,
    TaggedResourceSerializer,
    TerminatedInstancesSerializer,
)
from backends.drivers import sim_faults
from backends.models import Backend
from projects.api.base import ProjectScopedViewSet


class BackendViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedViewSet):
    """Backends of a project. Changing them needs the project admin role."""

    serializer_class = BackendSerializer
    admin_actions = frozenset({"create", "partial_update", "destroy", "terminate_instances", "faults", "drain",
                               "resume"})
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Backend.objects.none()
        return Backend.objects.filter(project=self.project)

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        backend = services.create_backend(project=self.project, actor=self.actor, **serializer.validated_data)
        return Response(self.get_serializer(backend).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=BackendUpdateSerializer, responses=BackendSerializer)
    def partial_update(self, request, *args, **kwargs):
        serializer = BackendUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        backend = services.update_backend(backend=self.get_object(), actor=self.actor, **serializer.validated_data)
        return Response(self.get_serializer(backend).data)

    def destroy(self, request, *args, **kwargs):
        services.delete_backend(backend=self.get_object(), actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={202: TerminatedInstancesSerializer})
    @action(detail=True, methods=["post"], url_path="terminate-instances")
    def terminate_instances(self, request, *args, **kwargs):
        names = services.terminate_backend_instances(backend=self.get_object(), actor=self.actor)
        return Response({"instances": names}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses=BackendSerializer)
    @action(detail=True, methods=["post"])
    def drain(self, request, *args, **kwargs):
        """Nothing new is placed or provisioned on the backend (``status: draining``); idempotent."""
        backend = services.drain_backend(backend=self.get_object(), actor=self.actor)
        return Response(self.get_serializer(backend).data)

    @extend_schema(request=None, responses=BackendSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, *args, **kwargs):
        """A draining backend takes new instances and volumes again (``status: active``); idempotent."""
        backend = services.resume_backend(backend=self.get_object(), actor=self.actor)
        return Response(self.get_serializer(backend).data)

    @extend_schema(methods=["get"], responses=FaultSerializer(many=True))
    @extend_schema(methods=["post"], request=dict, responses={201: FaultSerializer})
    @extend_schema(methods=["delete"], responses={204: None})
    @action(detail=True, methods=["get", "post", "delete"], url_path="faults", pagination_class=None)
    def faults(self, request, *args, **kwargs):
        """Faults injected into a sim backend (400 ``not_a_sim_backend`` for other types)."""
        backend = self.get_object()
        if request.method == "POST":
            fault = sim_faults.add_fault(backend, request.data if isinstance(request.data, dict) else None)
            return Response(FaultSerializer(fault).data, status=status.HTTP_201_CREATED)
        if request.method == "DELETE":
            sim_faults.clear_faults(backend, kind=request.query_params.get("kind"))
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(FaultSerializer(sim_faults.list_faults(backend), many=True).data)

    @extend_schema(responses={
        200: TaggedResourceSerializer(many=True),
        502: OpenApiResponse(ProviderErrorSerializer, description="The provider failed (code provider_error)."),
        503: OpenApiResponse(ProviderErrorSerializer, description="The provider failed transiently (throttled, "
                                                                  "timed out; code provider_error): retry later."),
    })
    @action(detail=True, methods=["get"], url_path="resources", pagination_class=None)
    def resources(self, request, *args, **kwargs):
        """The provider resources tagged by Stackyard, asked live; ``orphan``: no live instance or volume
        owns it (``backends.find_orphans`` reports and, if configured, terminates those)."""
        return Response(TaggedResourceSerializer(orphans.tagged_resources(backend=self.get_object()), many=True).data)
