"""Plumbing of the ``aws`` driver: boto3 clients, the mapping of AWS errors to the driver's typed
errors, and the short-lived caches shared by the driver's modules (it imports none of them).

* Clients use botocore's ``adaptive`` retry mode: throttled calls are retried with backoff and the
  client slows itself down; a call still throttled after the retries is a ``TransientError``.
* Every AWS error becomes a ``DriverError`` (``aws_errors``): capacity codes are ``NoCapacityError``
  (placement tries the next offer), throttling, 5xx and connection errors ``TransientError``, an
  unknown instance or volume id ``NotFoundError``, and the rest (refused credentials, bad
  parameters) ``FatalError`` with AWS's code and message.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
import time

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.parsers import ResponseParserError

from backends.drivers.base import FatalError, NoCapacityError, NotFoundError, TransientError

BOTO_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 4}, connect_timeout=5, read_timeout=30)

# EC2 codes meaning "not here, not now": another type or zone may have room (or quota).
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity", "InsufficientCapacityOnHost", "InsufficientVolumeCapacity", "Unsupported",
    "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded", "InstanceLimitExceeded", "VcpuLimitExceeded",
    "InsufficientFreeAddressesInSubnet",
})
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestThrottledException",
    "RequestLimitExceeded", "TooManyRequestsException", "SlowDown", "ServiceUnavailable", "Unavailable",
    "InternalError", "InternalFailure", "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
})
# Only ids the driver was given: an unknown AMI or subnet is a configuration error, not a gone resource.
NOT_FOUND_CODES = frozenset({
    "InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed", "InvalidVolume.NotFound",
    "InvalidVolumeID.Malformed",
})
ACCESS_CODES = frozenset({
    "AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "UnrecognizedClientException", "AccessDenied", "AccessDeniedException", "OptInRequired", "Blocked",
    "ExpiredToken", "RequestExpired",
})


def error_code(err: ClientError) -> str:
    return err.response.get("Error", {}).get("Code", "")


def typed_error(err: Exception, what: str):
    """The ``DriverError`` an AWS error means (``what``: the call, for the message)."""
    if isinstance(err, ClientError):
        code, message = error_code(err), err.response.get("Error", {}).get("Message", str(err))
        text = f"{what}: AWS said {code}: {message}"
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in CAPACITY_CODES:
            return NoCapacityError(text)
        if code in THROTTLING_CODES or status >= 500:
            return TransientError(text)
        if code in NOT_FOUND_CODES:
            return NotFoundError(text)
        if code in ACCESS_CODES:
            return FatalError(f"{what}: AWS refused the credentials or the permission ({code}: {message})")
        return FatalError(text)
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return FatalError(f"{what}: no usable AWS credentials ({err}); give access keys or configure boto3's "
                          f"default chain (environment, ~/.aws, instance role)")
    if isinstance(err, ConnectionError | HTTPClientError | ResponseParserError):
        return TransientError(f"{what}: AWS could not be reached or answered garbage ({err})")
    return FatalError(f"{what}: {err}")


@contextlib.contextmanager
def aws_errors(what: str):
    """Raise the typed ``DriverError`` of any AWS error in the block."""
    try:
        yield
    except (ClientError, BotoCoreError, ResponseParserError) as err:
        raise typed_error(err, what) from err


def aws_call(method):
    """A driver method whose AWS errors come out typed (named after the method)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with aws_errors(method.__name__.strip("_").replace("_", " ")):
            return method(self, *args, **kwargs)

    return wrapper


def make_session(credentials: dict) -> boto3.session.Session:
    """A boto3 session: the backend's access keys, or boto3's own chain for ``{"type": "default"}``."""
    if credentials.get("type") == "access_key":
        return boto3.session.Session(aws_access_key_id=credentials["access_key"],
                                     aws_secret_access_key=credentials["secret_key"])
    return boto3.session.Session()


def make_client(session: boto3.session.Session, service: str, region: str, endpoint_url: str | None):
    """One boto3 client (tests wrap this to watch or fake the calls)."""
    return session.client(service, region_name=region, endpoint_url=endpoint_url or None, config=BOTO_CONFIG)


def known_regions() -> set[str]:
    """The regions this botocore knows for EC2 in every partition (no call: its bundled endpoint data)."""
    session = boto3.session.Session()
    return {region for partition in session.get_available_partitions()
            for region in session.get_available_regions("ec2", partition_name=partition)}


def fingerprint(*parts) -> str:
    """A stable digest of a backend's config and credentials, so a changed backend never reads a stale
    cache entry (and no secret is kept in a cache key)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TtlCache:
    """A small thread-safe ``key -> value`` cache whose entries expire ``ttl`` seconds after they were put."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._entries: dict = {}
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] <= time.monotonic():
                self._entries.pop(key, None)
                return None
            return entry[1]

    def put(self, key, value) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic() + self.ttl, value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
