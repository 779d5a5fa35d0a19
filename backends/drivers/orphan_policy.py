"""The config keys every driver accepts about orphans, whatever its type.

``terminate_orphans`` (default false: orphans are only reported) and ``orphan_grace`` (how long an
orphan is left alone before it is terminated, default 10m; seconds or a duration like ``10m``).
Each driver's ``validate_config`` passes its config through ``validate_orphan_keys`` so the keys are
checked the same way everywhere; the orphan finder reads them with ``orphan_policy``.
"""

import dataclasses

from core.errors import InvalidInput
from core.specs import SpecError, parse_duration

ORPHAN_KEYS = ("terminate_orphans", "orphan_grace")
DEFAULT_GRACE_SECONDS = 600


@dataclasses.dataclass(frozen=True)
class OrphanPolicy:
    """What a backend does with its orphans: always report them, terminate them only if asked."""

    terminate: bool = False
    grace_seconds: int = DEFAULT_GRACE_SECONDS


def validate_orphan_keys(config: dict) -> dict:
    """The orphan keys ``config`` holds, normalized (the grace in seconds), or ``InvalidInput``."""
    cleaned = {}
    if "terminate_orphans" in config:
        if not isinstance(config["terminate_orphans"], bool):
            raise InvalidInput("terminate_orphans must be true or false", code="invalid_config",
                               field="terminate_orphans")
        cleaned["terminate_orphans"] = config["terminate_orphans"]
    if "orphan_grace" in config:
        try:
            cleaned["orphan_grace"] = parse_duration(config["orphan_grace"], "orphan_grace")
        except SpecError as err:
            raise InvalidInput(f"orphan_grace: {err.message}", code="invalid_config", field="orphan_grace") from None
    return cleaned


def orphan_policy(config: dict) -> OrphanPolicy:
    """The policy of a backend from its validated config, defaults filled in."""
    cleaned = validate_orphan_keys(config or {})
    return OrphanPolicy(terminate=cleaned.get("terminate_orphans", False),
                        grace_seconds=cleaned.get("orphan_grace", DEFAULT_GRACE_SECONDS))
