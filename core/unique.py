"""Creating a row with a unique name when another request may be creating the same name right now."""

from contextlib import contextmanager

from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from core.errors import Conflict


@contextmanager
def insert_once(same_name: QuerySet, what: str):
    """Run the insert of a new named row in a savepoint; a concurrent create of the same name is a 409.

    A service checks that the name is free and then inserts, but on PostgreSQL two requests can both
    find it free: the second insert then violates the unique constraint. That is answered
    ``409 conflict`` (the first request won), never a 500. ``same_name`` selects rows with that name:
    an IntegrityError with no such row is some other bug, and is raised as it is.
    """
    try:
        with transaction.atomic():
            yield
    except IntegrityError:
        if not same_name.exists():
            raise
        raise Conflict(f"{what} was just created by another request; look at it, or apply again",
                       code="conflict") from None
