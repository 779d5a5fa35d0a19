"""Reads about backends, shared by API, admin and tasks."""

from django.db.models import Q


def named(names, prefix: str = "") -> Q:
    """Backends that configurations name: an entry of ``backends: [...]`` matches a backend's name
    or its type (dstack users write ``backends: [aws]``). ``prefix`` filters through a relation."""
    return Q(**{f"{prefix}name__in": list(names)}) | Q(**{f"{prefix}type__in": list(names)})
