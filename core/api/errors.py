"""One error shape for the whole API: ``{"code": ..., "detail": ..., ...}``."""

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
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


@csrf_exempt  # like every API view: token auth, and a POST to a wrong path must get this 404, not a CSRF page
def api_not_found(request, *args, **kwargs):
    """An unknown path under the API: a 404 in the API's error shape, not Django's HTML page."""
    return JsonResponse({"code": "not_found", "detail": f"no API endpoint at {request.path}"}, status=404)


def exception_handler(exc, context):
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response({"code": "too_large", "detail": f"the request body is over the limit of {limit} bytes"},
                        status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, SuspiciousOperation):  # too many form fields or files: Django's own limits
        return Response({"code": "invalid", "detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
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
