"""``manage.py createuser NAME [--staff] [--project P] [--role user|admin]``: a user and its first API token.

For a new user the token is the last word of the output, so scripts can take it with ``| awk '{print $NF}'``.
Running it again for an existing user adds the membership (or changes the role) and leaves its tokens alone:
they are stored hashed and cannot be shown again (``manage.py createtoken NAME`` makes another).
"""

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from core.errors import ServiceError
from projects.models import Project, Role
from projects.services import add_member, create_user


class Command(BaseCommand):
    help = ("Create a user (or reuse one), optionally make it a member of a project; a new user's first API token "
            "is printed once.")

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
        if key is None:
            self.stdout.write(f"{kind} {user.username} exists{membership}; its tokens are unchanged "
                              f"(a new one: python manage.py createtoken {user.username})")
        else:
            self.stdout.write(f"{kind} {user.username}{membership}; token (shown once): {key}")
