"""Reading a dstack-compatible configuration file and dispatching it to the parser of its type.

``load_document`` turns the request body into one mapping; ``parse_configuration`` returns the
type and the normalized spec. Both raise SpecError, which the API reports as a 400 naming the field.
"""

import json

import yaml

from core.specs import (
    MAX_NESTING,
    SpecError,
    check_json_nesting,
    fill_env,
    kind_of,
    parse_request_env,
    require_mapping,
)
from fleets.specs import parse_fleet_spec
from runs.configuration import parse_run_spec
from volumes.specs import parse_volume_spec

PARSERS = {
    "fleet": parse_fleet_spec,
    "volume": parse_volume_spec,
    "task": parse_run_spec,
    "service": parse_run_spec,
    "dev-environment": parse_run_spec,
}
# dstack types that exist but that Stackyard does not run: a clear refusal, not "unknown type".
UNSUPPORTED_TYPES = ("gateway",)


# libyaml's parser when PyYAML was built with it: a hostile body of a hundred thousand items takes a
# tenth of the time of the pure-Python one. The constructor (below) is Python in both.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):
    """SafeLoader that refuses duplicate keys, which PyYAML would otherwise resolve silently to the last one."""

    def construct_mapping(self, node, deep=False):
        keys = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key: PyYAML's own check reports it
            if key in keys:
                mark = key_node.start_mark
                raise SpecError("", f"duplicate key {key!r} at line {mark.line + 1}, column {mark.column + 1}")
            keys.add(key)
        return super().construct_mapping(node, deep=deep)


def load_document(body: bytes | str, content_type: str | None) -> dict:
    """The one mapping in ``body``: JSON when the content type says so, YAML otherwise.

    Raises SpecError (field "") for an empty body, text that is not UTF-8, malformed YAML or JSON
    (saying where), several YAML documents, or a document that is not a mapping.
    """
    text = _decode(body)
    if not text.strip():
        raise SpecError("", "the configuration is empty")
    doc = _load_json(text) if _is_json(content_type) else _load_yaml(text)
    if doc is None:
        raise SpecError("", "the configuration is empty")
    if not isinstance(doc, dict):
        raise SpecError("", f"the configuration must be a mapping of fields (type: ..., name: ...), got {kind_of(doc)}")
    return doc


def unwrap_request(doc: dict) -> tuple[object, dict[str, str] | None]:
    """A JSON apply body may wrap the file: ``{"configuration": <the document, or its YAML text>,
    "env": {"HF_TOKEN": "..."}}``; the ``env`` map gives the values of the file's bare ``env`` entries.
    Returns (document, env map or None); a plain document is returned as it is."""
    if "configuration" not in doc:
        return doc, None
    extra = sorted(set(doc) - {"configuration", "env"})
    if extra:
        raise SpecError(extra[0], "a wrapped apply request has only 'configuration' and 'env'")
    configuration = doc["configuration"]
    if isinstance(configuration, str):
        configuration = load_document(configuration, "application/yaml")
    env = None if doc.get("env") is None else parse_request_env(doc["env"])
    return configuration, env


def parse_configuration(doc: dict, env: dict[str, str] | None = None) -> tuple[str, dict]:
    """(type, normalized spec) for a fleet, volume, task or service document; SpecError otherwise.
    ``env`` fills the document's valueless ``env`` entries (``core.specs.fill_env``)."""
    doc = require_mapping(doc, "")
    kind = doc.get("type")
    if kind is None:
        raise SpecError("type", f"this field is required: one of {', '.join(PARSERS)}")
    if not isinstance(kind, str):
        raise SpecError("type", f"expected one of {', '.join(PARSERS)}, got {kind_of(kind)}")
    if kind in UNSUPPORTED_TYPES:
        raise SpecError("type", f"Stackyard does not support '{kind}' configurations yet")
    if kind not in PARSERS:
        raise SpecError("type", f"unknown configuration type {kind!r}: expected one of {', '.join(PARSERS)}")
    spec = PARSERS[kind](doc)
    return kind, fill_env(spec, env) if "env" in spec else spec


def _decode(body: bytes | str) -> str:
    if isinstance(body, str):
        return body
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError("", f"the configuration is not valid UTF-8 (byte {exc.start})") from None


def _is_json(content_type: str | None) -> bool:
    """True for application/json and any +json media type, whatever the parameters (charset=...)."""
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _load_json(text: str) -> object:
    check_json_nesting(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError("", f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # an integer of thousands of digits, which Python refuses to convert
        raise SpecError("", f"malformed JSON: {exc}") from None


def _check_yaml_nesting(text: str) -> None:
    """Refuse YAML nested deeper than MAX_NESTING before composing it: composing and constructing recurse,
    and a thousand levels would raise RecursionError. Parse events come flat, whatever the depth."""
    depth = 0
    for event in yaml.parse(text, Loader=_SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_NESTING:
                raise SpecError("", f"the document is nested deeper than {MAX_NESTING} levels of lists and "
                                    f"mappings (line {event.start_mark.line + 1})")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _load_yaml(text: str) -> object:
    try:
        _check_yaml_nesting(text)
        documents = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError("", f"malformed YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecError("", f"malformed YAML: {exc}") from None
    except ValueError as exc:  # an integer of thousands of digits, which Python refuses to convert
        raise SpecError("", f"malformed YAML: {exc}") from None
    documents = [doc for doc in documents if doc is not None]
    if len(documents) > 1:
        raise SpecError("", f"expected one YAML document, got {len(documents)}: apply them one at a time")
    return documents[0] if documents else None
