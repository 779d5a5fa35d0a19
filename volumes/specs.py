"""The dstack-compatible network volume configuration (``type: volume``): parsing and validation."""

from typing import Literal

from pydantic import model_validator

from core.configuration import (
    ConfigurationModel,
    Name,
    OffDuration,
    Tags,
    Text,
    check,
    parsed,
    validate_configuration,
)
from core.specs import (
    SpecError,
    parse_size,
    require_mapping,
    short_repr,
)

MAX_VOLUME_SIZE_GB = 65536  # 64 TB, the largest network volume a cloud offers (README "Limits")


def parse_volume_spec(doc: dict) -> dict:
    """Validate a volume document and return its normalized spec, or raise SpecError naming the bad field.

    Result: {"type": "volume", "name", "backend", "region", "availability_zone": str | None,
    "size_gb": int | None, "volume_id": str | None, "auto_cleanup_seconds": int | None, "tags": dict | None,
    "kubernetes": {...} | None}. ``size`` is required unless ``volume_id`` registers an existing volume; when
    both are given the size is kept as information. ``auto_cleanup_duration`` becomes ``auto_cleanup_seconds``.
    """
    return validate_configuration(VolumeConfiguration, require_mapping(doc, "")).to_spec()


class VolumeConfiguration(ConfigurationModel):
    """dstack's volume configuration, every backend's fields in one model."""

    type: Literal["volume"] = "volume"
    name: Name
    backend: Text
    region: Text
    availability_zone: Text | None = None
    size: parsed(lambda value, field: parse_size_gb(value, field), {"anyOf": [
        {"type": "integer", "minimum": 1}, {"type": "string", "examples": ["100GB", "1TB"]}]}) | None = None
    volume_id: Text | None = None
    auto_cleanup_duration: OffDuration | None = None
    tags: Tags | None = None
    # dstack's kubernetes volume fields: stored, shown, and passed to a driver that knows them.
    claim_name: str | None = None
    storage_class_name: str | None = None
    access_modes: list[str] | None = None
    read_only: bool | None = None

    @model_validator(mode="after")
    def _size_or_volume_id(self) -> "VolumeConfiguration":
        check(self.size is not None or self.volume_id is not None, "size",
              "this field is required unless 'volume_id' names an existing volume")
        return self

    def to_spec(self) -> dict:
        kubernetes = self.model_dump(include={"claim_name", "storage_class_name", "access_modes", "read_only"},
                                     exclude_none=True)
        return {
            "type": "volume",
            "name": self.name,
            "backend": self.backend,
            "region": self.region,
            "availability_zone": self.availability_zone,
            "size_gb": self.size,
            "volume_id": self.volume_id,
            "auto_cleanup_seconds": self.auto_cleanup_duration or None,
            "tags": self.tags,
            "kubernetes": kubernetes or None,
        }


def parse_size_gb(value: object, field: str = "size") -> int:
    """A positive whole number of GB ('500GB', '1TB', 500), at most MAX_VOLUME_SIZE_GB."""
    size = parse_size(value, field, maximum=MAX_VOLUME_SIZE_GB)
    if size <= 0 or size != int(size):
        raise SpecError(field, f"must be a positive whole number of GB, got {short_repr(value)}")
    return int(size)
