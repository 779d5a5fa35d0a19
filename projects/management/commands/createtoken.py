"""``manage.py createtoken USERNAME [--name N] [--expires 30d]``: a new API token, printed once.

The token is the last word of the output (``| awk '{print $NF}'``). Only its digest is stored, so this is
the one chance to copy it; list and revoke tokens with ``/api/v1/users/me/tokens/`` or in the admin.
"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from core.errors import ServiceError
from projects.tokens import create_token, expiry_after


class Command(BaseCommand):
    help = "Make a new API token for a user and print it (once: only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="cli", help="what the token is for (default: cli)")
        parser.add_argument("--expires", metavar="DURATION",
                            help="lifetime: seconds, or 30d, 12h, 1w... (default: never expires)")

    def handle(self, *args, username: str, name: str, expires: str | None, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r} (create one with: python manage.py createuser {username})")
        try:
            token, key = create_token(user=user, name=name, expires_at=expiry_after(expires, "--expires"))
        except ServiceError as err:
            raise CommandError(err.detail)
        until = f"expires {token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else "never expires"
        self.stdout.write(f"token {token.name!r} of {user.username} ({until}; shown once): {key}")
