"""State transitions as compare-and-swap: a row moves only from the states a service allows."""

from django.db import models
from django.utils import timezone


def compare_and_swap(model: type[models.Model], *, pk: int, allowed_from, to: str, **changes) -> bool:
    """Move one row to status ``to`` only if it is still in ``allowed_from``.

    Returns False when someone else moved it first; the caller decides what that means
    (409 in the API, skip in a task). ``updated_at`` is set because ``update()`` skips auto_now.
    """
    if any(f.name == "updated_at" for f in model._meta.fields):
        changes.setdefault("updated_at", timezone.now())
    return model.objects.filter(pk=pk, status__in=list(allowed_from)).update(status=to, **changes) == 1
