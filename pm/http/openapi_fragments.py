"""Pieces every part of the OpenAPI document is built from: JSON content, query parameters
derived from a query Struct's schema, a total-count header.

Pure functions over plain data; :mod:`pm.http.openapi` and :mod:`pm.http.openapi_devices`
assemble them.
"""

from __future__ import annotations

from typing import Any

REF_TEMPLATE = "#/components/schemas/{name}"
_JSON = "application/json"


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    """A ``content`` object: ``schema`` as ``application/json``."""
    return {_JSON: {"schema": schema}}


def query_parameters(query_schema: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``in: query`` parameter per property of a query Struct's schema."""
    required = set(query_schema.get("required", ()))
    parameters = []
    for name, schema in query_schema["properties"].items():
        schema = dict(schema)
        # An optional parameter is simply left out; "null" is not something a query can say.
        if "anyOf" in schema:
            kept = [option for option in schema["anyOf"] if option != {"type": "null"}]
            if len(kept) == 1:
                del schema["anyOf"]
                schema.update(kept[0])
            else:
                schema["anyOf"] = kept
            if schema.get("default", ...) is None:
                del schema["default"]
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        description = schema.pop("description", None)
        if description is not None:
            parameter["description"] = description
        parameter["schema"] = schema
        parameters.append(parameter)
    return parameters


def total_count(what: str) -> dict[str, Any]:
    """The ``X-Total-Count`` header of a paged list of ``what``."""
    return {
        "description": f"{what} matching the filters, all pages",
        "schema": {"type": "integer", "minimum": 0},
    }
