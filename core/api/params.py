"""Query parameters read strictly: a value the API does not understand is a 400, never a silent default."""

from core.errors import InvalidInput

TRUE_VALUES = ("true", "1", "yes")
FALSE_VALUES = ("false", "0", "no")


def boolean_param(request, name: str, default: bool = False) -> bool:
    """The boolean query flag ``name``: true/false, 1/0 or yes/no (any case); ``default`` when absent.

    Anything else (``?dry_run=banana``, an empty ``?dry_run=``) is a 400 naming the parameter, so a typo
    never turns a dry run into a real change.
    """
    if name not in request.query_params:
        return default
    value = request.query_params.get(name, "").strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise InvalidInput(f"{name}: expected true or false, got {request.query_params.get(name)[:40]!r}", field=name)
