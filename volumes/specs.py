"""The dstack-compatible network volume configuration (``type: volume``): parsing and validation."""

from core.specs import (
    SpecError,
    check_keys,
    check_type,
    parse_duration,
    parse_name,
    parse_size,
    parse_str,
    require,
    require_mapping,
    short_repr,
)

VOLUME_FIELDS = ("type", "name", "backend", "region", "availability_zone", "size", "volume_id",
                 "auto_cleanup_duration")
# dstack volume fields Stackyard does not implement: refused by name rather than silently dropped.
UNSUPPORTED_VOLUME_FIELDS = ("tags",)
MAX_VOLUME_SIZE_GB = 65536  # 64 TB, the largest network volume a cloud offers (README "Limits")


def parse_volume_spec(doc: dict) -> dict:
    """Validate a volume document and return its normalized spec, or raise SpecError naming the bad field.

    Result: {"type": "volume", "name", "backend", "region", "availability_zone": str | None,
    "size_gb": int | None, "volume_id": str | None, "auto_cleanup_seconds": int | None}. ``size`` is
    required unless ``volume_id`` registers an existing volume; when both are given the size is kept
    as information. ``auto_cleanup_duration`` becomes ``auto_cleanup_seconds``.
    """
    doc = require_mapping(doc, "")
    check_type(doc, "volume")
    check_keys(doc, "", VOLUME_FIELDS, UNSUPPORTED_VOLUME_FIELDS)
    volume_id = None if doc.get("volume_id") is None else parse_str(doc["volume_id"], "volume_id")
    if doc.get("size") is None and volume_id is None:
        raise SpecError("size", "this field is required unless 'volume_id' names an existing volume")
    zone = doc.get("availability_zone")
    return {
        "type": "volume",
        "name": parse_name(require(doc, "name"), "name"),
        "backend": parse_str(require(doc, "backend"), "backend"),
        "region": parse_str(require(doc, "region"), "region"),
        "availability_zone": None if zone is None else parse_str(zone, "availability_zone"),
        "size_gb": None if doc.get("size") is None else parse_size_gb(doc["size"]),
        "volume_id": volume_id,
        "auto_cleanup_seconds": parse_cleanup_duration(doc.get("auto_cleanup_duration")),
    }


def parse_size_gb(value: object, field: str = "size") -> int:
    """A positive whole number of GB ('500GB', '1TB', 500), at most MAX_VOLUME_SIZE_GB."""
    size = parse_size(value, field, maximum=MAX_VOLUME_SIZE_GB)
    if size <= 0 or size != int(size):
        raise SpecError(field, f"must be a positive whole number of GB, got {short_repr(value)}")
    return int(size)


def parse_cleanup_duration(value: object, field: str = "auto_cleanup_duration") -> int | None:
    """Seconds a volume may stay unused before it is deleted (1h, 30m, 3600), at most a year; None
    (never, the default) for off, -1 or 0, as dstack reads them."""
    seconds = None if value is None else parse_duration(value, field, allow_off=True)
    return seconds or None
