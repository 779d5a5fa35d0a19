"""What lives on a backend, as the apps above backends tell it.

backends must not import the apps that create resources on a backend (fleets, volumes), yet the
deletion check must list them and an operator must be able to empty a backend. Those apps register,
when Django starts, a function per kind of resource; this module asks them.
"""

from collections.abc import Callable

_LIVE: dict[str, Callable] = {}
_TERMINATORS: dict[str, Callable] = {}


def register_dependents(kind: str, live_names: Callable) -> None:
    """``live_names(backend)``: names of the ``kind`` resources (plural, e.g. "instances") that keep
    ``backend`` in use."""
    _LIVE[kind] = live_names


def backend_dependencies(backend) -> dict[str, list[str]]:
    """``{kind: [names]}`` of everything that keeps ``backend`` in use (every registered kind listed)."""
    return {kind: list(live_names(backend)) for kind, live_names in sorted(_LIVE.items())}


def register_terminator(kind: str, terminate: Callable) -> None:
    """``terminate(backend=..., actor=...)`` lets go of every ``kind`` resource of the backend and
    returns their names."""
    _TERMINATORS[kind] = terminate


def terminate_dependents(*, backend, kind: str, actor: str = "") -> list[str]:
    return list(_TERMINATORS[kind](backend=backend, actor=actor))
