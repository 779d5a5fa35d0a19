"""The apply endpoint: one dstack configuration file (YAML or JSON) creates or updates a resource."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from configurations.api.serializers import ApplyResultSerializer
from configurations.apply import apply_configuration
from configurations.schema import configuration_schema
from core.api.params import boolean_param
from core.applying import redact_secrets
from fleets.api.serializers import FleetSerializer
from projects.api.base import project_for_request
from runs.api.serializers import RunSerializer
from runs.selectors import runs_with_replica_counts
from volumes.api.serializers import VolumeSerializer

CONFIGURATION_SCHEMA = configuration_schema()
RESOURCE_SERIALIZERS = {"fleet": FleetSerializer, "volume": VolumeSerializer}


def _serialize_resource(result) -> dict | None:
    if result.resource is None or result.resource.pk is None:
        return None
    if result.type in RESOURCE_SERIALIZERS:
        return RESOURCE_SERIALIZERS[result.type](result.resource).data
    if result.action in ("create", "replace"):
        return RunSerializer(result.resource).data  # just submitted: no replica runs yet, nothing to count
    run = runs_with_replica_counts().get(pk=result.resource.pk)
    return RunSerializer(run).data


class ApplyView(APIView):
    """Apply a dstack configuration file (YAML or JSON): create or update a fleet, volume or run."""

    # The body is read raw: YAML has no DRF parser, and parse errors must name the problem.
    parser_classes = []

    @extend_schema(
        request={"application/yaml": CONFIGURATION_SCHEMA, "application/json": CONFIGURATION_SCHEMA},
        parameters=[OpenApiParameter("dry_run", bool, description="say what would change, change nothing")],
        responses={200: ApplyResultSerializer, 202: ApplyResultSerializer},
    )
    def post(self, request, project: str):
        project_obj, _ = project_for_request(request, project)
        dry_run = boolean_param(request, "dry_run")
        result = apply_configuration(project=project_obj, body=request.body, content_type=request.content_type,
                                     user=request.user, dry_run=dry_run)
        changed = not dry_run and result.action != "unchanged"
        data = {"type": result.type, "name": result.name, "action": result.action, "dry_run": dry_run,
                "changes": redact_secrets(result.changes), "plan": result.plan, "spec": redact_secrets(result.spec),
                "resource": None if dry_run else _serialize_resource(result)}
        return Response(data, status=status.HTTP_202_ACCEPTED if changed else status.HTTP_200_OK)
