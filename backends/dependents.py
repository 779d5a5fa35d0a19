"""What lives on a backend, as the apps above backends tell it.

backends must not import the apps that create resources on a backend (fleets, volumes), yet the
deletion check must list them, an operator must be able to empty a backend, and the orphan finder
must know which provider resources some row owns. Those apps register, when Django starts, a
function per kind of resource; this module asks them.
"""

from collections.abc import Callable

from django.db.models import Count

from backends.drivers.base import TAG_PROJECT

_LIVE: dict[str, Callable] = {}
_LIVE_FILTERS: dict[str, Callable] = {}
_TERMINATORS: dict[str, Callable] = {}


def register_dependents(kind: str, live_names: Callable, live_filter: Callable) -> None:
    """``live_names(backend)``: names of the ``kind`` resources (plural, e.g. "instances", also the
    reverse relation's name on Backend) that keep ``backend`` in use; ``live_filter()``: the same as
    a ``Q`` on ``Backend`` through that relation (for counting in one query)."""
    _LIVE[kind] = live_names
    _LIVE_FILTERS[kind] = live_filter


def dependent_counts() -> dict:
    """Annotations ``n_<kind>``: how many live resources of each kind a backend has."""
    return {f"n_{kind}": Count(kind, filter=live_filter(), distinct=True)
            for kind, live_filter in _LIVE_FILTERS.items()}


def backend_dependencies(backend) -> dict[str, list[str]]:
    """``{kind: [names]}`` of everything that keeps ``backend`` in use (every registered kind listed)."""
    return {kind: list(live_names(backend)) for kind, live_names in sorted(_LIVE.items())}


def register_terminator(kind: str, terminate: Callable) -> None:
    """``terminate(backend=..., actor=...)`` lets go of every ``kind`` resource of the backend and
    returns their names."""
    _TERMINATORS[kind] = terminate


def terminate_dependents(*, backend, kind: str, actor: str = "") -> list[str]:
    return list(_TERMINATORS[kind](backend=backend, actor=actor))


# --- ownership of provider resources (the orphan finder) ----------------------------------------

_OWNERS: dict[str, Callable] = {}


def register_owner(kind: str, owned: Callable) -> None:
    """``owned(resources)``: which of ``resources`` (``TaggedResource``s of ``kind``, "instance" or
    "volume") the database accounts for, as a set of provider ids.

    A resource is accounted for when a live row holds its provider id, or when a live row its tags
    name has no provider id yet: that row's create is in flight, and the loop that made the call is
    about to record the answer (or find it by client token).
    """
    _OWNERS[kind] = owned


def owned_provider_ids(resources) -> set[str]:
    """The provider ids among ``resources`` that some row owns. A kind no app registered is never
    judged: its resources count as owned, so nothing unknown is ever called an orphan."""
    by_kind: dict[str, list] = {}
    for resource in resources:
        by_kind.setdefault(resource.kind, []).append(resource)
    owned: set[str] = set()
    for kind, group in by_kind.items():
        owner = _OWNERS.get(kind)
        owned |= set(owner(group)) if owner is not None else {r.provider_id for r in group}
    return owned


def owned_by_rows(resources, *, live, id_field: str, in_flight, name_tag: str) -> set[str]:
    """What an owner registered with ``register_owner`` usually answers, for rows with a ``project``
    and a ``name``: the rows of ``live`` own the provider ids in their ``id_field``; the rows of
    ``in_flight`` (live, no provider id yet) own the resources tagged with their project and their
    name (``TAG_PROJECT`` and ``name_tag``)."""
    ids = {r.provider_id for r in resources}
    owned = set(live.filter(**{f"{id_field}__in": ids}).values_list(id_field, flat=True))
    by_name: dict[tuple[str, str], list[str]] = {}
    for r in resources:
        if r.provider_id not in owned and r.tags.get(name_tag):
            by_name.setdefault((r.tags.get(TAG_PROJECT, ""), r.tags[name_tag]), []).append(r.provider_id)
    if by_name:
        names = {name for _, name in by_name}
        for key in in_flight.filter(name__in=names).values_list("project__name", "name"):
            owned.update(by_name.get(key, []))
    return owned
