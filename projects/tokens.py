"""API tokens: made, checked, revoked. Only digests are stored (``ApiToken``); a secret exists in clear
only in the answer that makes it.

Tokens are ``secrets.token_urlsafe(32)`` (256 random bits), so one unsalted SHA-256 is enough to keep
them safe at rest (as django-rest-knox and GitHub do): a slow password hash buys nothing for a secret
that cannot be guessed, and would cost every request.
"""

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core.errors import InvalidInput
from core.specs import MAX_DURATION, SpecError, parse_duration
from projects.models import ApiToken

PREFIX_LENGTH = 6
# A token given by an operator (STACKYARD_ADMIN_TOKEN) must be at least this long; generated ones have 43.
MIN_TOKEN_LENGTH = 32
# ``last_used_at`` is written when it is older than this: at most one write a minute per token.
LAST_USED_PRECISION = timedelta(seconds=60)
MAX_NAME_LENGTH = ApiToken._meta.get_field("name").max_length


class TokenRejected(Exception):
    """The key names no valid token; ``detail`` says why (unknown, revoked, expired, inactive user)."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


def digest_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return secrets.token_urlsafe(32)


def check_key(key: str, field: str = "token") -> str:
    """An operator-given secret: at least MIN_TOKEN_LENGTH characters, no whitespace (it goes in a header)."""
    if not isinstance(key, str) or len(key) < MIN_TOKEN_LENGTH:
        raise InvalidInput(f"{field} must be at least {MIN_TOKEN_LENGTH} characters long "
                           f"(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')",
                           field=field)
    if any(ch.isspace() for ch in key) or not key.isprintable():
        raise InvalidInput(f"{field} must not contain spaces or control characters", field=field)
    return key


def parse_name(value: object, field: str = "name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field}: expected a non-empty string", field=field)
    if len(value.strip()) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{field}: at most {MAX_NAME_LENGTH} characters", field=field)
    return value.strip()


def expiry_after(value: object, field: str = "expires_in", *, now: datetime | None = None) -> datetime | None:
    """When a token made now with ``expires_in`` (seconds, or 30d, 12h, 1w...; None: never) expires."""
    if value is None:
        return None
    try:
        seconds = parse_duration(value, field, maximum=MAX_DURATION)
    except SpecError as err:
        raise InvalidInput(str(err), field=field) from err
    if not seconds:
        raise InvalidInput(f"{field}: must be at least 1 second, or null for a token that never expires",
                           field=field)
    return (now or timezone.now()) + timedelta(seconds=seconds)


def create_token(*, user, name: str, expires_at: datetime | None = None,
                 key: str | None = None) -> tuple[ApiToken, str]:
    """Make a token for ``user`` and return it with its secret, which is stored nowhere: show it once.

    ``key`` is an operator-chosen secret (``check_key``); by default a random one is made.
    """
    key = new_key() if key is None else check_key(key)
    token = ApiToken.objects.create(user=user, name=parse_name(name), prefix=key[:PREFIX_LENGTH],
                                    digest=digest_of(key), expires_at=expires_at)
    return token, key


def valid_tokens(user, now: datetime | None = None):
    now = now or timezone.now()
    return ApiToken.objects.filter(user=user, revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now))


@transaction.atomic
def revoke_token(token: ApiToken) -> ApiToken:
    """Revoke ``token`` (already revoked: unchanged, so revoking twice is harmless). It stops working at once."""
    now = timezone.now()
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
    token.refresh_from_db(fields=["revoked_at"])
    return token


def authenticate_key(key: str) -> ApiToken:
    """The valid token whose secret is ``key``, with its user (one query, plus at most one write a minute)."""
    digest = digest_of(key)
    token = ApiToken.objects.select_related("user").filter(digest=digest).first()
    # The lookup is by digest; comparing again in constant time costs nothing and keeps no timing signal.
    if token is None or not hmac.compare_digest(token.digest, digest):
        raise TokenRejected("invalid token")
    now = timezone.now()
    status = token.status_at(now)
    if status != "active":
        raise TokenRejected(f"token {status}; make a new one (POST /api/v1/users/me/tokens/)")
    if not token.user.is_active:
        raise TokenRejected("user inactive or deleted")
    _touch(token, now)
    return token


def _touch(token: ApiToken, now: datetime) -> None:
    """Record use, at most once per LAST_USED_PRECISION: the conditional update also makes concurrent
    requests write once."""
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_PRECISION:
        return
    ApiToken.objects.filter(pk=token.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_PRECISION)).update(last_used_at=now)
    token.last_used_at = now
