"""Parsing and validation shared by every dstack-compatible configuration file.

Each parser takes a raw value as read from YAML or JSON plus the dotted path of the field it came
from, and either returns a normalized, JSON-serializable value or raises :class:`SpecError` naming
that field. Nothing here touches the database, so the API, the admin and the tests share it freely.
"""

import json
import math
import re
from collections.abc import Callable, Iterable

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,40}$")
SPOT_POLICIES = ("spot", "on-demand", "auto")
RETRY_EVENTS = ("no-capacity", "interruption", "error")
RETRY_DEFAULT_DURATION = 3600
RETRY_DEFAULT_INTERVAL = 15

# Limits: every number a configuration holds has a range, and a value outside it is a 400 naming the
# field (README "Limits"). They also keep background passes and the database clear of absurd values.
MAX_NODES = 1000  # a fleet's nodes (N, min..max) and a task's nodes
MAX_CPUS = 1024  # resources.cpu
MAX_GPUS = 64  # resources.gpu count
MAX_MEMORY_GB = 65536  # 64 TB: resources.memory, shm_size, GPU memory
MAX_DISK_GB = 1048576  # 1 PB: resources.disk, and the ceiling of any size
MAX_DURATION = 365 * 86400  # one year, in seconds: every duration
MAX_PRICE = 10000.0  # dollars per hour: max_price
MAX_RETRY_ATTEMPTS = 1000  # retry.max_attempts
MAX_NESTING = 64  # levels of lists and mappings in a YAML or JSON body

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"^(?:\d+[smhdw])+$")
_DURATION_PART_RE = re.compile(r"(\d+)([smhdw])")
# Binary units, as dstack uses them: 512MB is half a GB.
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:([kmgt])i?b)?$", re.IGNORECASE)
_SIZE_FACTORS = {"k": 1 / 1024**2, "m": 1 / 1024, "g": 1.0, "t": 1024.0, None: 1.0}
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A JSON string (its closing quote optional, so an unterminated one is still one token) or a bracket.
# Possessive: each character is looked at once, so hostile text (a megabyte of \") costs linear time.
_JSON_TOKEN_RE = re.compile(r'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]')
_KIND_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
}


class SpecError(Exception):
    """A configuration is invalid. ``field`` is the dotted path of the culprit, "" for the whole document."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def subfield(parent: str, key: object) -> str:
    """The dotted path of ``key`` below ``parent`` ("resources" + "gpu" -> "resources.gpu")."""
    return f"{parent}.{key}" if parent else str(key)


# --- structure ---------------------------------------------------------------------------------


def require_mapping(value: object, field: str) -> dict:
    """Return ``value`` if it is a mapping, else raise SpecError on ``field``."""
    if not isinstance(value, dict):
        raise SpecError(field, f"expected a mapping, got {kind_of(value)}")
    return value


def check_keys(doc: dict, field: str, supported: Iterable[str], unsupported: Iterable[str] = ()) -> None:
    """Guarantee every key of ``doc`` is supported; a dstack field Stackyard lacks is never ignored silently."""
    supported, unsupported = set(supported), set(unsupported)
    for key in doc:
        if key in supported:
            continue
        if key in unsupported:
            raise SpecError(subfield(field, key), f"field '{key}' is not supported yet")
        raise SpecError(subfield(field, key), f"unknown field '{key}'")


def require(doc: dict, key: str, field: str | None = None) -> object:
    """Return ``doc[key]``, raising SpecError when it is absent or null."""
    if doc.get(key) is None:
        raise SpecError(field or key, "this field is required")
    return doc[key]


def check_json_nesting(text: str, maximum: int = MAX_NESTING) -> None:
    """Refuse JSON text nested deeper than ``maximum`` lists and objects, before it is parsed.

    Python's JSON parser recurses: a thousand levels raise RecursionError (a 500) instead of an answer.
    """
    depth = 0
    for match in _JSON_TOKEN_RE.finditer(text):
        token = match.group()
        if token[0] == '"':
            continue
        depth += 1 if token in "[{" else -1
        if depth > maximum:
            raise SpecError("", f"the document is nested deeper than {maximum} levels of lists and mappings")


def kind_of(value: object) -> str:
    """A short human name of a YAML/JSON value's type, for error messages."""
    return "null" if value is None else _KIND_NAMES.get(type(value), type(value).__name__)


def _fmt(number: float) -> str:
    """A number for an error message: 65536, 0.5, 1e+23."""
    return f"{number:.15g}"


def short_repr(value: object) -> str:
    """``repr(value)``, cut so that a hostile megabyte never ends up in an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int_of_digits(text: str, field: str, maximum: int) -> int:
    """The int a string of decimal digits spells, refused above ``maximum`` before Python converts it.

    Python refuses to convert more than 4300 digits (a ValueError, so a 500); no limit comes near 19.
    """
    if len(text.lstrip("0")) > 18:
        raise SpecError(field, f"{'is too large' if maximum is None else f'must be at most {maximum}'}, "
                               f"got {short_repr(text)}")
    return int(text)


# --- scalars -----------------------------------------------------------------------------------


def parse_int(value: object, field: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer within bounds. Booleans are refused: YAML reads an unquoted ``yes`` as True."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(field, f"expected an integer, got {kind_of(value)}")
    if minimum is not None and value < minimum:
        raise SpecError(field, f"must be at least {minimum}, got {short_repr(value)}")
    if maximum is not None and value > maximum:
        raise SpecError(field, f"must be at most {maximum}, got {short_repr(value)}")
    return value


def parse_str(value: object, field: str) -> str:
    """A non-empty string, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise SpecError(field, f"expected a non-empty string, got {kind_of(value)}")
    return value.strip()


def parse_name(value: object, field: str) -> str:
    """A resource name by dstack's rule: a lowercase letter, then 1 to 40 of a-z, 0-9 and '-'."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise SpecError(field, f"invalid name {value!r}: use 2-41 characters a-z, 0-9 and '-', starting with a letter")
    return value


def parse_string_list(value: object, field: str) -> list[str]:
    """A list of non-empty strings; a single string is a list of one."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise SpecError(field, f"expected a string or a list of strings, got {kind_of(value)}")
    return [parse_str(item, f"{field}[{i}]") for i, item in enumerate(value)]


def parse_choice(value: object, field: str, choices: Iterable[str]) -> str:
    """One of ``choices``, exactly."""
    choices = tuple(choices)
    if value not in choices:
        raise SpecError(field, f"must be one of {', '.join(choices)}; got {value!r}")
    return value


def _is_number(value: object) -> bool:
    """A finite int or float; YAML's .nan/.inf and JSON's NaN/Infinity are not sizes or prices."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_price(value: object, field: str, maximum: float = MAX_PRICE) -> float:
    """A positive price in dollars per hour, at most ``maximum``."""
    if not _is_number(value) or value <= 0:
        raise SpecError(field, f"expected a positive number of dollars per hour, got {short_repr(value)}")
    if value > maximum:
        raise SpecError(field, f"must be at most {_fmt(maximum)} dollars per hour, got {_fmt(value)}")
    return float(value)


def parse_duration(value: object, field: str, allow_off: bool = False, maximum: int = MAX_DURATION) -> int | None:
    """Seconds from an int or a string like 30s, 5m, 1h, 1d, 1w (or 1h30m), at most ``maximum`` (a year);
    None for 'off' when allowed.

    YAML 1.1 reads an unquoted ``off`` as False, so False means 'off' too where 'off' is allowed.
    """
    if allow_off and (value == "off" or value is False or (type(value) is int and value == -1)):
        return None
    raw = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text.isdecimal():
            value = _int_of_digits(text, field, maximum)
        elif _DURATION_RE.match(text):
            value = sum(_int_of_digits(n, field, maximum) * _DURATION_UNITS[unit]
                        for n, unit in _DURATION_PART_RE.findall(text))
        elif text == "off":
            raise SpecError(field, "'off' is not allowed here: give a duration like 1h")
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise SpecError(field, f"a duration must not be negative, got {value}")
        if value > maximum:
            raise SpecError(field, f"must be at most {maximum // 86400}d ({maximum} seconds), got {short_repr(raw)}")
        return value
    off = ", or off" if allow_off else ""
    raise SpecError(field, f"invalid duration {short_repr(raw)}: use seconds or a number with s, m, h, d or w "
                           f"(5m, 1h){off}")


def parse_size(value: object, field: str, maximum: float = MAX_DISK_GB) -> float:
    """A size in GB from '16GB', '16 GB', '512MB', '1TB' or a plain number (GB), at most ``maximum`` GB."""
    if _is_number(value):
        if value < 0:
            raise SpecError(field, f"a size must not be negative, got {value}")
        size = float(value)
    else:
        match = _SIZE_RE.match(value.strip()) if isinstance(value, str) else None
        if not match:
            raise SpecError(field, f"invalid size {short_repr(value)}: use a number with MB, GB or TB, like 16GB")
        unit = match.group(2).lower() if match.group(2) else None
        size = float(match.group(1)) * _SIZE_FACTORS[unit]  # a thousand digits make inf, refused below
    if not size <= maximum:
        raise SpecError(field, f"must be at most {_fmt(maximum)}GB, got {short_repr(value)}")
    return size


def parse_count(value: object, field: str, maximum: int | None = None) -> int:
    """A non-negative integer, also given as a string of digits (as it appears inside a range)."""
    if isinstance(value, str) and value.strip().isdecimal():
        value = _int_of_digits(value.strip(), field, maximum)
    if isinstance(value, str):
        raise SpecError(field, f"invalid count {short_repr(value)}: expected a non-negative integer")
    return parse_int(value, field, minimum=0, maximum=maximum)


def parse_range(value: object, field: str, parse_item: Callable[[object, str], float], maximum: float | None = None,
                unit: str = "") -> dict:
    """{"min", "max"} from 'a..b', 'a..', '..b', a single value (min == max) or a {min, max} mapping.

    Both ends are at most ``maximum`` (in ``unit``, for the message) when one is given.
    """
    if isinstance(value, dict):
        check_keys(value, field, ("min", "max"))
        low, high = value.get("min"), value.get("max")
    elif isinstance(value, str) and ".." in value:
        low, _, high = (part.strip() or None for part in value.partition(".."))
    else:
        low = high = value
    if low is None and high is None:
        raise SpecError(field, f"invalid range {short_repr(value)}: give a min, a max or both")
    low = None if low is None else parse_item(low, field)
    high = None if high is None else parse_item(high, field)
    for end in (low, high):
        if maximum is not None and end is not None and end > maximum:
            raise SpecError(field, f"must be at most {_fmt(maximum)}{unit}, got {_fmt(end)}{unit}")
    if low is not None and high is not None and low > high:
        raise SpecError(field, f"invalid range {short_repr(value)}: min is greater than max")
    return {"min": low, "max": high}


# --- env, retry, placement ---------------------------------------------------------------------


def parse_env(value: object, field: str = "env") -> dict[str, str | None]:
    """Environment variables from a list of 'KEY=VALUE' strings or a mapping; values become strings.

    A bare ``KEY`` (or ``KEY:`` with no value in a mapping) is dstack's "take it from the user's shell":
    its value is None here, and ``fill_env`` fills it from the apply request's ``env`` map."""
    if value is None:
        return {}
    if isinstance(value, list):
        return dict(_parse_env_item(item, f"{field}[{i}]") for i, item in enumerate(value))
    env = require_mapping(value, field)
    result: dict[str, str | None] = {}
    for key, item in env.items():
        _check_env_key(key, subfield(field, key))
        if item is None:
            result[key] = None
            continue
        # Booleans are refused rather than guessed: YAML turns an unquoted yes/off into True/False.
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise SpecError(subfield(field, key), f"expected a string value (quote it), got {kind_of(item)}")
        result[key] = str(item)
    return result


def _parse_env_item(item: object, field: str) -> tuple[str, str | None]:
    """One 'KEY=VALUE' list item, or a bare 'KEY' whose value the request gives."""
    if not isinstance(item, str):
        raise SpecError(field, f"expected 'KEY=VALUE' or 'KEY', got {item!r}")
    key, sep, val = item.partition("=")
    _check_env_key(key, field)
    return key, (val if sep else None)


def fill_env(spec: dict, given: dict[str, str] | None) -> dict:
    """The spec with every valueless ``env`` entry taken from ``given`` (the request's ``env`` map, as
    the CLI sends the user's shell values); SpecError on ``env`` naming those still missing."""
    env = spec.get("env")
    if not env or all(value is not None for value in env.values()):
        return spec
    given = given or {}
    missing = [key for key, value in env.items() if value is None and key not in given]
    if missing:
        example = json.dumps({missing[0]: "..."})
        raise SpecError("env", f"no value for {', '.join(missing)}: give it as KEY=VALUE in the file, or in the "
                               f"request's env map ({{\"configuration\": ..., \"env\": {example}}})")
    return {**spec, "env": {key: given[key] if value is None else value for key, value in env.items()}}


def parse_request_env(value: object, field: str = "env") -> dict[str, str]:
    """The apply request's ``env`` map: variable names to string values."""
    env = require_mapping(value, field)
    for key, item in env.items():
        _check_env_key(key, subfield(field, key))
        if not isinstance(item, str):
            raise SpecError(subfield(field, key), f"expected a string value, got {kind_of(item)}")
    return dict(env)


def _check_env_key(key: object, field: str) -> None:
    if not isinstance(key, str) or not _ENV_KEY_RE.match(key):
        raise SpecError(field, f"invalid environment variable name {key!r}")


def parse_retry(value: object, field: str = "retry") -> dict | None:
    """{"on_events", "duration", "interval"} in seconds and "max_attempts" (None: no limit), or None when
    retry is off (false or absent)."""
    if value is None or value is False:
        return None
    if value is True:
        return {"on_events": list(RETRY_EVENTS), "duration": RETRY_DEFAULT_DURATION, "interval": RETRY_DEFAULT_INTERVAL,
                "max_attempts": None}
    spec = require_mapping(value, field)
    check_keys(spec, field, ("on_events", "duration", "max_duration", "interval", "max_attempts"))
    duration_key = pick_alias(spec, "duration", "max_duration", field)
    duration = spec.get(duration_key)
    interval = spec.get("interval")
    attempts = spec.get("max_attempts")
    return {
        "on_events": _parse_retry_events(spec.get("on_events"), subfield(field, "on_events")),
        "duration": RETRY_DEFAULT_DURATION if duration is None else parse_duration(duration, f"{field}.{duration_key}"),
        "interval": RETRY_DEFAULT_INTERVAL if interval is None else parse_duration(interval, f"{field}.interval"),
        "max_attempts": None if attempts is None else parse_int(attempts, f"{field}.max_attempts", minimum=1,
                                                                maximum=MAX_RETRY_ATTEMPTS),
    }


def _parse_retry_events(value: object, field: str) -> list[str]:
    if value is None:
        return list(RETRY_EVENTS)
    events = parse_string_list(value, field)
    if not events:
        raise SpecError(field, f"must list at least one of {', '.join(RETRY_EVENTS)}")
    for i, event in enumerate(events):
        parse_choice(event, f"{field}[{i}]", RETRY_EVENTS)
    return list(dict.fromkeys(events))


def pick_alias(doc: dict, key: str, alias: str, field: str = "") -> str:
    """The key under which a value aliased by dstack is given (``key`` when neither); both is an error."""
    if doc.get(key) is not None and doc.get(alias) is not None:
        raise SpecError(subfield(field, alias), f"give only one of '{key}' and '{alias}'")
    return alias if doc.get(alias) is not None else key
