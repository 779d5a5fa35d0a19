from django.db.models import Prefetch
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.response import Response

from core.applying import typed_document
from projects.api.base import ProjectScopedViewSet
from volumes import services
from volumes.api.serializers import AttachmentSerializer, VolumeSerializer
from volumes.models import Volume, VolumeAttachment
from volumes.specs import parse_volume_spec


class VolumeViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedViewSet):
    """Network volumes. ``POST`` takes a dstack volume configuration (as JSON)."""

    serializer_class = VolumeSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Volume.objects.none()
        attachments = Prefetch("attachments", queryset=VolumeAttachment.objects.select_related("instance", "job"))
        return Volume.objects.filter(project=self.project).select_related("backend").prefetch_related(attachments)

    @extend_schema(request=dict, responses={202: VolumeSerializer})
    def create(self, request, *args, **kwargs):
        spec = parse_volume_spec(typed_document(request.data, "volume"))
        result = services.apply_volume(project=self.project, spec=spec, actor=self.actor)
        return Response(self.get_serializer(result.resource).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses={202: VolumeSerializer})
    def destroy(self, request, *args, **kwargs):
        volume = services.delete_volume(volume=self.get_object(), actor=self.actor)
        return Response(self.get_serializer(self.get_queryset().get(pk=volume.pk)).data,
                        status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: AttachmentSerializer})
    @action(detail=True, methods=["post"], url_path="force-detach")
    def force_detach(self, request, *args, **kwargs):
        attachment = services.request_force_detach(volume=self.get_object(), actor=self.actor)
        return Response(AttachmentSerializer(attachment).data, status=status.HTTP_202_ACCEPTED)
