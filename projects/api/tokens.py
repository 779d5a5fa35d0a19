"""The caller's own API tokens: ``/api/v1/users/me/tokens/``.

A token's secret is in the answer to the POST that makes it, and nowhere else, ever: lists show its
name, its prefix and its dates.
"""

from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from projects.models import ApiToken
from projects.tokens import create_token, expiry_after, revoke_token


class ApiTokenSerializer(serializers.ModelSerializer):
    status = serializers.SerializerMethodField(help_text="active, expired or revoked")

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "status", "created_at", "expires_at", "revoked_at", "last_used_at"]
        read_only_fields = fields

    def get_status(self, token: ApiToken) -> str:
        return token.status_at(timezone.now())


class NewApiTokenSerializer(ApiTokenSerializer):
    token = serializers.SerializerMethodField(help_text="the secret: shown in this answer only, store it now")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields

    def get_token(self, token: ApiToken) -> str:
        return self.context["key"]


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "example": "30d"}],
                      "nullable": True})
class DurationField(serializers.JSONField):
    pass


class CreateApiTokenSerializer(serializers.Serializer):
    """A new token: what it is for, and how long it lives. (``projects.tokens`` checks both: 400 naming the field.)"""

    name = serializers.CharField(max_length=64)
    expires_in = DurationField(required=False, allow_null=True,
                               help_text="seconds, or a duration like 30d, 12h, 1w; null or absent: never")


class ApiTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The caller's tokens, newest first; another user's token is a 404. DELETE revokes (the row stays, so
    the list shows when it stopped working)."""

    serializer_class = ApiTokenSerializer
    lookup_value_regex = r"\d+"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ApiToken.objects.none()
        return ApiToken.objects.filter(user=self.request.user)

    @extend_schema(request=CreateApiTokenSerializer, responses={201: NewApiTokenSerializer})
    def create(self, request, *args, **kwargs):
        data = request.data if isinstance(request.data, dict) else {}
        token, key = create_token(user=request.user, name=data.get("name"),
                                  expires_at=expiry_after(data.get("expires_in")))
        return Response(NewApiTokenSerializer(token, context={"key": key}).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: ApiTokenSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, *args, **kwargs):
        return Response(self.get_serializer(revoke_token(self.get_object())).data)

    @extend_schema(responses={204: None})
    def destroy(self, request, *args, **kwargs):
        revoke_token(self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
