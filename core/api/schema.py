"""OpenAPI: every operation documents its error responses, once, here rather than view by view."""

ERROR_SCHEMA = {
    "type": "object",
    "description": "The one error shape of the API. Some errors add fields (``field``, ``errors``, names of "
                   "the resources in the way...).",
    "properties": {
        "code": {"type": "string", "description": "machine-readable: invalid, not_found, conflict, too_large, ..."},
        "detail": {"type": "string", "description": "what went wrong, in words a user can act on"},
        "field": {"type": "string", "description": "the dotted path of the culprit in a configuration"},
        "errors": {"description": "field errors of a request, by field"},
    },
    "required": ["code", "detail"],
    "additionalProperties": True,
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}

ALWAYS = {
    "400": "Invalid input (body, query parameter or configuration); nothing was changed.",
    "401": "No valid token.",
    "403": "The caller's role does not allow this.",
    "404": "No such resource, or not a member of its project.",
}
WRITES = {"409": "The current state forbids this (in use, already exists, a concurrent change)."}
BODIES = {
    "413": "The request body is over the size limit (code too_large).",
    "415": "The body's content type is not one this operation reads.",
}
WRITE_METHODS = ("post", "put", "patch", "delete")
BODY_METHODS = ("post", "put", "patch")


def error_responses(method: str) -> dict[str, str]:
    """The error statuses an operation of ``method`` can answer, with their descriptions."""
    statuses = dict(ALWAYS)
    if method in WRITE_METHODS:
        statuses.update(WRITES)
    if method in BODY_METHODS:
        statuses.update(BODIES)
    return statuses


def document_error_responses(result, generator, request, public):
    """drf-spectacular postprocessing hook: add the Error component and each operation's error responses."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            responses = operation.setdefault("responses", {})
            for code, description in error_responses(method).items():
                responses.setdefault(code, {"description": description,
                                            "content": {"application/json": {"schema": ERROR_REF}}})
    return result
