"""What keeps an instance from being terminated, told by the apps above fleets.

fleets must not import the apps that use instances (runs, volumes), yet must never terminate an
instance under an unfinished job or with a volume attached. Those apps register, when Django
starts, a condition on ``Instance`` that is true while they hold it; the termination loop leaves
alone every instance that matches any of them. The same goes for the blocks verification, which
must know how many blocks each instance's unfinished jobs hold.
"""

from collections.abc import Callable

from django.db.models import Q

_HOLDS: dict[str, Callable[[], Q]] = {}
_BLOCKS: dict[str, Callable[[], object]] = {}


def register_holder(name: str, condition: Callable[[], Q]) -> None:
    """``condition()`` matches the instances that ``name`` holds (for example, with a live job)."""
    _HOLDS[name] = condition


def held() -> Q:
    """Instances that something registered still holds."""
    result = Q(pk__in=[])
    for condition in _HOLDS.values():
        result |= condition()
    return result


def register_block_holder(name: str, live_blocks: Callable[[], object]) -> None:
    """``live_blocks()`` is a subquery expression: the blocks held on ``OuterRef("pk")``."""
    _BLOCKS[name] = live_blocks


def live_blocks_expressions() -> list:
    return [factory() for factory in _BLOCKS.values()]
