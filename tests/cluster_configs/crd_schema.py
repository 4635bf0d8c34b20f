"""A Kubernetes object checked against a CRD's ``openAPIV3Schema`` with ``jsonschema``.

Types, enums, required fields, patterns and ranges are jsonschema's (the CRD schema is the
OpenAPI v3 subset jsonschema's Draft 7 reads). Unknown fields are what the API server's strict
field validation (``kubectl apply --validate=strict``) rejects: a key of an object whose schema
lists ``properties`` without ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields``.
The schemas are vendored by ``scripts/refresh_kuberay_schemas.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jsonschema


def dotted(path: str, parts: Iterable[str | int]) -> str:
    """``path`` extended by keys (``.key``) and list indices (``[i]``)."""
    return path + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def unknown_fields(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """``<path>.<key>: unknown field`` for every key no schema level allows."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    errors = []
    if isinstance(value, dict):
        properties, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                errors += unknown_fields(item, properties[key], dotted(path, [key]))
            elif isinstance(extra, dict):
                errors += unknown_fields(item, extra, dotted(path, [key]))
            elif properties is not None and extra is None:
                errors.append(f"{dotted(path, [key])}: unknown field")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += unknown_fields(item, schema["items"], dotted(path, [i]))
    return errors


def schema_errors(doc: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Every schema error of ``doc``, one ``<dotted field>: <message>`` line each, sorted."""
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{dotted(path, e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    return sorted(errors + unknown_fields(doc, schema, path))
