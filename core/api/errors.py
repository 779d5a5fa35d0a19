"""One error shape for the whole API: ``{"code": ..., "detail": ..., ...}``."""

import logging

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import ServiceError
from core.specs import SpecError

logger = logging.getLogger(__name__)


def _first_message(data, prefix: str = "") -> str:
    """The first field error, as ``field: message``, to give the top-level detail a useful sentence."""
    if isinstance(data, dict):
        for key, value in data.items():
            name = key if key == "non_field_errors" else (f"{prefix}.{key}" if prefix else str(key))
            return _first_message(value, "" if key == "non_field_errors" else name)
    if isinstance(data, list) and data:
        return _first_message(data[0], prefix)
    return f"{prefix}: {data}" if prefix else str(data)


def exception_handler(exc, context):
    if isinstance(exc, ServiceError):
        return Response(exc.as_dict(), status=exc.status_code)
    if isinstance(exc, SpecError):
        return Response({"code": "invalid_configuration", "detail": str(exc), "field": exc.field},
                        status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled error in %s", context.get("view"), exc_info=exc)
        return Response({"code": "server_error", "detail": "internal error; the operators have the details"},
                        status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"code": "invalid", "detail": _first_message(exc.detail), "errors": exc.detail}
    else:
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else getattr(exc, "default_code", "error")
        response.data = {"code": code, "detail": str(exc.detail)}
    return response
