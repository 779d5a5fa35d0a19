"""API authentication by ``ApiToken``: ``Authorization: Token <key>`` (the SPEC's form) or
``Authorization: Bearer <key>`` (dstack's CLI form)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from projects.tokens import TokenRejected, authenticate_key

KEYWORDS = (b"token", b"bearer")


class ApiTokenAuthentication(BaseAuthentication):
    """One query per request (the token with its user); a revoked or expired token is a 401 saying so."""

    keyword = "Token"

    def authenticate(self, request):
        words = get_authorization_header(request).split()
        if not words or words[0].lower() not in KEYWORDS:
            return None  # not ours: session authentication may still apply
        if len(words) != 2:
            raise exceptions.AuthenticationFailed(
                "invalid Authorization header: expected 'Token <key>' or 'Bearer <key>'")
        try:
            key = words[1].decode("ascii")
        except UnicodeError:
            raise exceptions.AuthenticationFailed("invalid token: it has characters a token never has")
        try:
            token = authenticate_key(key)
        except TokenRejected as err:
            raise exceptions.AuthenticationFailed(err.detail)
        return token.user, token

    def authenticate_header(self, request):
        # A WWW-Authenticate value makes DRF answer 401 (not 403) to an unauthenticated request.
        return self.keyword


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """Documents the scheme in the OpenAPI schema (drf-spectacular finds extensions by import)."""

    target_class = ApiTokenAuthentication
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "header", "name": "Authorization",
                "description": "'Token <key>' or 'Bearer <key>'; make keys at /api/v1/users/me/tokens/"}
