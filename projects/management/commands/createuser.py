"""``manage.py createuser NAME [--staff] [--project P] [--role user|admin]``: a user and its API token.

The token is the last word of the output, so scripts can take it with ``| awk '{print $NF}'``.
Running it again for an existing user adds the membership (or changes the role) and prints the same token.
"""

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from core.errors import ServiceError
from projects.models import Project, Role
from projects.services import add_member, create_user


class Command(BaseCommand):
    help = "Create a user (or reuse one), optionally make it a member of a project, and print its API token."

    def add_arguments(self, parser):
        parser.add_argument("name", help="username")
        parser.add_argument("--staff", action="store_true", help="staff users see every project")
        parser.add_argument("--project", help="make the user a member of this project")
        parser.add_argument("--role", choices=Role.values, help="role in --project (default: user)")

    def handle(self, *args, name: str, staff: bool, project: str | None, role: str | None, **options):
        if role and not project:
            raise CommandError("--role needs --project")
        try:
            get_user_model()._meta.get_field("username").run_validators(name)
        except ValidationError as err:
            raise CommandError(f"invalid username {name!r}: {' '.join(err.messages)}")
        try:
            with transaction.atomic():
                user, key = create_user(username=name, staff=staff)
                membership = ""
                if project:
                    project_obj = Project.objects.filter(name=project).first()
                    if project_obj is None:
                        raise CommandError(f"project '{project}' does not exist")
                    role = role or Role.USER
                    add_member(project=project_obj, user=user, role=role, actor="createuser")
                    membership = f", {role} of project {project}"
        except ServiceError as err:
            raise CommandError(err.detail)
        kind = "staff user" if user.is_staff else "user"
        self.stdout.write(f"{kind} {user.username}{membership}; token: {key}")
