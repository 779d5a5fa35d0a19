"""``manage.py applyconfig [--file PATH] [--dry-run]``: apply the server config file (``ops.server_config``).

Prints one line per project created and per backend (created, updated, resumed, unchanged, drained,
draining, deleted, error) and exits 1 when the file is invalid or any backend could not be applied.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ops.server_config import ServerConfigError, apply_file


class Command(BaseCommand):
    help = "Apply the server config file (STACKYARD_CONFIG, or --file): projects and their backends."

    def add_arguments(self, parser):
        parser.add_argument("--file", help="the file to apply (default: $STACKYARD_CONFIG)")
        parser.add_argument("--dry-run", action="store_true",
                            help="print what would change, change nothing (no provider access check)")

    def handle(self, *args, file: str | None, dry_run: bool, **options):
        path = file or settings.SERVER_CONFIG
        if not path:
            raise CommandError("no server config file: pass --file PATH or set STACKYARD_CONFIG")
        try:
            outcomes = apply_file(path, dry_run=dry_run)
        except ServerConfigError as err:
            raise CommandError(str(err)) from None
        for outcome in outcomes:
            self.stdout.write(outcome.describe(dry_run=dry_run))
        if not outcomes:
            self.stdout.write(f"{path} declares no project")
        failures = sum(o.failed for o in outcomes)
        if failures:
            raise CommandError(f"{failures} backend(s) could not be applied; the others were"
                               + (" checked" if dry_run else " applied"))
        if dry_run:
            self.stdout.write("dry run: nothing was changed")
