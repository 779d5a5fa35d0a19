"""Which driver serves which backend type. Only types listed here can be used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backends.drivers.aws import AwsDriver
from backends.drivers.base import Driver, DriverError
from backends.drivers.local import LocalDriver
from backends.drivers.sim import SimDriver
from core.errors import InvalidInput
from core.pipeline import Drivers

if TYPE_CHECKING:
    from backends.models import Backend

DRIVERS: dict[str, type[Driver]] = {
    "sim": SimDriver,
    "aws": AwsDriver,
    "local": LocalDriver,
}


def supported_types() -> list[str]:
    """Backend types that have a driver, sorted."""
    return sorted(DRIVERS)


def driver_class(type_name: str) -> type[Driver]:
    """The driver class for a backend type, or ``InvalidInput(code="unsupported_backend_type")``."""
    try:
        return DRIVERS[type_name]
    except KeyError:
        raise InvalidInput(
            f"backend type {type_name!r} has no driver; supported types: {', '.join(supported_types())}",
            code="unsupported_backend_type",
            field="type",
        ) from None


def get_driver(backend: Backend) -> Driver:
    """A driver bound to ``backend`` (its config validated; see ``Driver.__init__``)."""
    return driver_class(backend.type)(backend)


def pass_drivers() -> Drivers:
    """The drivers of one reconcile pass: built once per backend, ``DriverError`` answered per row."""
    return Drivers(get_driver, errors=DriverError)
