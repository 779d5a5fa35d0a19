"""The pydantic base of the dstack-compatible configuration models, and the types they share.

Each configuration type is a pydantic v2 model with ``extra="forbid"``, as dstack defines its own
(``fleets.configuration``, ``volumes.configuration``, ``runs.configuration``). One model gives three
things: validation, the 400 that names the field (``validate_configuration`` turns pydantic's errors
into a :class:`core.specs.SpecError` with a dotted path such as ``resources.gpu.count`` or
``volumes[1].path``), and the JSON schema the OpenAPI document shows for the apply endpoint.

Values that need dstack's small languages (``24GB..``, ``A100:2``, ``1h``, ``off``, ``KEY=VALUE``)
are read by the parsers of ``core.specs`` through :func:`parsed`: the field holds the normalized
value (seconds, GB, ranges), so a model's ``to_spec()`` is a plain copy.
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError

from core.resource_specs import parse_resources
from core.specs import (
    MAX_PRICE,
    SPOT_POLICIES,
    SpecError,
    kind_of,
    parse_duration,
    parse_env,
    parse_name,
    parse_price,
    parse_retry,
    parse_str,
    parse_string_list,
    short_repr,
)

_KINDS = {
    "bool_type": "a boolean",
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


class ConfigurationModel(BaseModel):
    """A part of a configuration file: unknown fields are refused by name, types are not coerced
    (YAML already gives booleans, numbers and strings), and the input never ends up in a message."""

    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)


def _join(loc: str, sub: str) -> str:
    if not sub:
        return loc
    if not loc or sub[0] in ".[":
        return (loc + sub).lstrip(".")
    return f"{loc}.{sub}"


def _location(loc: tuple) -> str:
    path = ""
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
    return path


def spec_error(err: ValidationError) -> SpecError:
    """The first of pydantic's errors as a SpecError naming the field, in Stackyard's words."""
    first = err.errors(include_url=False)[0]
    kind, ctx, loc = first["type"], first.get("ctx") or {}, first["loc"]
    # A function validator's location ends with the function's name: not a field of the file.
    loc = tuple(part for part in loc if not (isinstance(part, str) and part.startswith("function-")))
    field = _location(loc)
    if kind == "spec":
        return SpecError(_join(field, ctx.get("sub", "")), ctx["message"])
    if kind == "extra_forbidden":
        return SpecError(field, f"unknown field '{loc[-1]}'")
    if kind == "missing":
        return SpecError(field, "this field is required")
    if kind in _KINDS:
        return SpecError(field, f"expected {_KINDS[kind]}, got {kind_of(first.get('input'))}")
    if kind == "literal_error":
        return SpecError(field, f"must be one of {ctx.get('expected', '')}; got {short_repr(first.get('input'))}")
    return SpecError(field, first["msg"])


M = TypeVar("M", bound=BaseModel)


def validate_configuration(model: type[M], doc: object) -> M:
    """``model`` validated from ``doc``, or SpecError naming the first bad field."""
    try:
        return model.model_validate(doc)
    except ValidationError as err:
        raise spec_error(err) from None


def _spec_validator(parser: Callable[..., Any], kwargs: dict) -> Callable[[Any], Any]:
    def validate(value: Any) -> Any:
        try:
            return parser(value, "", **kwargs)
        except SpecError as err:
            raise PydanticCustomError("spec", "{message}", {"message": err.message, "sub": err.field}) from None

    return validate


def parsed(parser: Callable[..., Any], schema: dict, **kwargs: Any) -> Any:
    """A field type read by a ``core.specs``-style parser ``parser(value, field, **kwargs)``: the field holds
    what the parser returns; ``schema`` is the JSON schema of what the file may say."""
    return Annotated[Any, PlainValidator(_spec_validator(parser, kwargs)), WithJsonSchema(schema)]


def unsupported(reason: str) -> Any:
    """A dstack field Stackyard refuses, with a 400 saying why, rather than ignoring it."""

    def refuse(value: Any, field: str) -> None:
        if value is None:
            return None
        raise SpecError("", reason)

    return parsed(refuse, {"description": f"Not supported by Stackyard: {reason}"})


def check(condition: bool, field: str, message: str) -> None:
    """For a model validator: SpecError on ``field`` (a path from the document's root) unless ``condition``."""
    if not condition:
        raise PydanticCustomError("spec", "{message}", {"message": message, "sub": field})


# --- the shared field types --------------------------------------------------------------------

_DURATION_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "examples": ["30s", "5m", "1h"]}]}
_OFF_DURATION_SCHEMA = {"anyOf": [*_DURATION_SCHEMA["anyOf"], {"const": "off"}, {"type": "boolean"}]}
_STR_LIST_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_RANGE_SCHEMA = {"anyOf": [{"type": "integer"}, {"type": "string", "examples": ["1..4", "2.."]},
                           {"type": "object", "properties": {"min": {}, "max": {}}}]}

Name = parsed(parse_name, {"type": "string", "pattern": "^[a-z][a-z0-9-]{1,40}$"})
Text = parsed(parse_str, {"type": "string", "minLength": 1})
StrList = parsed(parse_string_list, _STR_LIST_SCHEMA)
Duration = parsed(parse_duration, _DURATION_SCHEMA)
OffDuration = parsed(parse_duration, _OFF_DURATION_SCHEMA, allow_off=True)
Price = parsed(parse_price, {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_PRICE})
Env = parsed(parse_env, {"anyOf": [{"type": "array", "items": {"type": "string"}},
                                   {"type": "object", "additionalProperties": {"type": ["string", "number", "null"]}}]})
Resources = parsed(parse_resources, {"type": "object", "description": "cpu, memory, shm_size, gpu, disk (dstack)",
                                     "properties": {k: {} for k in ("cpu", "memory", "shm_size", "gpu", "disk")}})
Retry = parsed(parse_retry, {"anyOf": [{"type": "boolean"}, {"type": "object", "properties": {
    k: {} for k in ("on_events", "duration", "max_duration", "interval", "max_attempts")}}]})
RangeSchema = _RANGE_SCHEMA
SpotPolicy = Literal[SPOT_POLICIES]  # type: ignore[valid-type]
Tags = dict[str, str]


def _text_list(value: object, field: str) -> list[str]:
    """A list of strings that may be empty (commands, init, setup); one string is a list of one."""
    return [] if value is None else parse_string_list(value, field)


Commands = parsed(_text_list, _STR_LIST_SCHEMA)


class OfferFilters(ConfigurationModel):
    """dstack's profile fields that choose where instances come from, shared by fleets and runs."""

    backends: StrList | None = None
    regions: StrList | None = None
    availability_zones: StrList | None = None
    instance_types: StrList | None = None
    reservation: str | None = None
    spot_policy: SpotPolicy | None = None
    max_price: Price | None = None
    idle_duration: OffDuration | None = None
    tags: Tags | None = None
    backend_options: list[dict[str, Any]] | None = None

    def offer_filters(self) -> dict:
        """The normalized offer filters every spec carries (see ``core.specs.parse_placement``)."""
        return {
            "backends": self.backends,
            "regions": self.regions,
            "availability_zones": self.availability_zones,
            "instance_types": self.instance_types,
            "spot_policy": self.spot_policy or "on-demand",
            "max_price": self.max_price,
        }
