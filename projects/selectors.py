"""Reads about projects and membership, shared by API, admin and tasks."""

from django.db.models import QuerySet

from projects.models import Membership, Project, Role


def projects_visible_to(user) -> QuerySet[Project]:
    """Staff see every project; anyone else only the projects they are a member of."""
    if user.is_staff:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user)


def role_in_project(user, project: Project) -> str | None:
    """The user's role in the project: staff count as admins; non-members get None."""
    if user.is_staff:
        return Role.ADMIN
    return Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()
