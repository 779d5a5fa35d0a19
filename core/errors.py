"""Domain errors raised by services; the API turns each into one response shape.

Every error carries a machine-readable ``code``, a human ``detail`` and optional extra fields
(for example the names of the instances that keep a backend in use).
"""


class ServiceError(Exception):
    """Base of every error a service raises on purpose."""

    status_code = 400
    default_code = "error"

    def __init__(self, detail: str, *, code: str | None = None, **extra):
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code
        self.extra = extra

    def as_dict(self) -> dict:
        return {"code": self.code, "detail": self.detail, **self.extra}


class InvalidInput(ServiceError):
    """The request itself is wrong; nothing was changed."""

    status_code = 400
    default_code = "invalid"


class Conflict(ServiceError):
    """The request is valid but the current state forbids it (409)."""

    status_code = 409
    default_code = "conflict"


class NotFound(ServiceError):
    status_code = 404
    default_code = "not_found"
