"""The JSON schema of a configuration file, from the pydantic models: what the OpenAPI document shows
for the apply endpoint's body."""

from fleets.specs import FleetConfiguration
from runs.configuration import MODELS as RUN_MODELS
from volumes.specs import VolumeConfiguration

CONFIGURATION_MODELS = {"fleet": FleetConfiguration, "volume": VolumeConfiguration, **RUN_MODELS}


def _inline(node: object, defs: dict) -> object:
    """``node`` with every ``$ref`` to ``#/$defs/X`` replaced by X itself (the models are not recursive),
    so the schema stands alone inside the OpenAPI document."""
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _inline(defs[ref.removeprefix("#/$defs/")], defs)
    return {key: _inline(value, defs) for key, value in node.items() if key != "$defs"}


def _openapi30(node: object) -> object:
    """JSON Schema 2020-12 (pydantic's) as OpenAPI 3.0's schema dialect: ``{"type": "null"}`` becomes
    ``nullable``, ``const`` a one-value ``enum``, a numeric ``exclusiveMinimum`` the boolean form, ``examples``
    one ``example``, and a list of types an ``anyOf``."""
    if isinstance(node, list):
        return [_openapi30(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _openapi30(value) for key, value in node.items()}
    if isinstance(node.get("type"), list):
        types = node.pop("type")
        if "null" in types:
            node["nullable"] = True
        node["anyOf"] = [{"type": kind} for kind in types if kind != "null"]
    for key in ("anyOf", "oneOf"):
        if key in node and {"type": "null"} in node[key]:
            node[key] = [item for item in node[key] if item != {"type": "null"}]
            node["nullable"] = True
            if len(node[key]) == 1:
                node.update(node.pop(key)[0])
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node[bound], bool):
            node[plain], node[bound] = node[bound], True
    if "examples" in node:
        examples = node.pop("examples")
        if examples:
            node["example"] = examples[0]
    return node


def configuration_schema() -> dict:
    """One of the configuration types, told apart by ``type``."""
    variants = []
    for model in CONFIGURATION_MODELS.values():
        schema = model.model_json_schema()
        variants.append(_openapi30(_inline(schema, schema.get("$defs", {}))))
    return {"oneOf": variants, "description": "A dstack configuration file (task, service, dev-environment, "
                                              "fleet or volume), as YAML or JSON."}
