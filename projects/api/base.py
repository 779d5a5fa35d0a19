"""The base of every project-scoped endpoint: tenancy, roles and name lookups."""

from django.http import Http404
from django.utils.functional import cached_property
from rest_framework import exceptions, viewsets

from projects.models import Project, Role
from projects.selectors import role_in_project
from projects.services import actor_name


def project_for_request(request, project_name: str) -> tuple[Project, str]:
    """The project named in the URL and the caller's role in it; 404 for non-members (never 403)."""
    project = Project.objects.filter(name=project_name).first()
    role = role_in_project(request.user, project) if project is not None else None
    if role is None:
        raise Http404
    return project, role


class ProjectScopedViewSet(viewsets.GenericViewSet):
    """Resources of the project in the URL, looked up by ``name``.

    ``admin_actions`` lists the actions that need the project ``admin`` role.
    """

    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    admin_actions: frozenset[str] = frozenset()

    @cached_property
    def project_and_role(self) -> tuple[Project, str]:
        return project_for_request(self.request, self.kwargs["project"])

    @property
    def project(self) -> Project:
        return self.project_and_role[0]

    @property
    def actor(self) -> str:
        return actor_name(self.request.user)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if getattr(self, "swagger_fake_view", False):
            return
        _, role = self.project_and_role
        if self.action in self.admin_actions and role != Role.ADMIN:
            raise exceptions.PermissionDenied(f"only project admins can {self.action.replace('_', ' ')}")

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "project": None if getattr(self, "swagger_fake_view", False)
                else self.project}
