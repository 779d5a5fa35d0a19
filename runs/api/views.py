import django_filters
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from core.api.params import boolean_param
from core.applying import typed_document
from projects.api.base import ProjectScopedViewSet
from runs import logs, services
from runs.api.serializers import JobSerializer, RunSerializer, StopSerializer
from runs.configuration import parse_run_spec
from runs.models import Job, Run, RunStatus, RunType
from runs.selectors import runs_with_replica_counts


class RunFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=RunStatus.choices)

    class Meta:
        model = Run
        fields = ["status"]


class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedViewSet):
    """Runs. ``POST`` takes a dstack task, service or dev-environment configuration (as JSON)."""

    serializer_class = RunSerializer
    filterset_class = RunFilter

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Run.objects.none()
        return runs_with_replica_counts(Run.objects.filter(project=self.project))

    def _respond(self, run: Run, code: int) -> Response:
        return Response(self.get_serializer(self.get_queryset().get(pk=run.pk)).data, status=code)

    @extend_schema(request=dict, responses={202: RunSerializer})
    def create(self, request, *args, **kwargs):
        kind = request.data.get("type") if isinstance(request.data, dict) else None
        # typed_document's default admits tasks and services; a dev environment is a run too.
        doc = typed_document(request.data, RunType.DEV_ENVIRONMENT if kind == RunType.DEV_ENVIRONMENT else None)
        spec = parse_run_spec(doc)
        result = services.submit_run(project=self.project, spec=spec, user=request.user)
        return self._respond(result.resource, status.HTTP_202_ACCEPTED)

    def destroy(self, request, *args, **kwargs):
        services.delete_run(run=self.get_object(), actor=self.actor)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=StopSerializer, responses={202: RunSerializer})
    @action(detail=True, methods=["post"])
    def stop(self, request, *args, **kwargs):
        serializer = StopSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        run = services.stop_run(run=self.get_object(), abort=serializer.validated_data["abort"], actor=self.actor)
        return self._respond(run, status.HTTP_202_ACCEPTED)

    @extend_schema(responses=JobSerializer(many=True))
    @action(detail=True, methods=["get"])
    def jobs(self, request, *args, **kwargs):
        run = self.get_object()
        page = self.paginate_queryset(Job.objects.filter(run=run).select_related("instance"))
        return self.get_paginated_response(JobSerializer(page, many=True).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("job", str, description="a job name (its latest submission); default: the first job"),
            OpenApiParameter("tail", int, description=f"only the last N lines (0..{logs.MAX_TAIL}); default: all, "
                                                      f"up to the last {logs.MAX_TAIL}"),
            OpenApiParameter("follow", bool, description="stream the lines as text/plain, then new ones as they come, "
                                                         f"until the job ends (at most {logs.FOLLOW_SECONDS} s)"),
        ],
        responses={
            (200, "application/json"): inline_serializer("JobLogs", {
                "job": serializers.CharField(), "lines": serializers.ListField(child=serializers.CharField())}),
            (200, "text/plain"): OpenApiTypes.STR,
        },
    )
    @action(detail=True, methods=["get"])
    def logs(self, request, *args, **kwargs):
        follow = boolean_param(request, "follow")
        tail = logs.parse_tail(request.query_params.get("tail"))
        job_name = logs.parse_job_name(request.query_params.get("job"))
        job = logs.log_job(run=self.get_object(), name=job_name)
        if not follow:
            return Response({"job": job.name, "lines": logs.job_log_lines(job=job, tail=tail)})
        lines = logs.follow_job_logs(job=job, tail=tail)
        response = StreamingHttpResponse((line + "\n" for line in lines), content_type="text/plain; charset=utf-8")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # a proxy in front passes each line on at once
        return response
