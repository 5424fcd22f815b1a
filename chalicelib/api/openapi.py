"""/v1/openapi.json, generated from the endpoints and models the handlers use."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import chalicelib
from chalicelib.api.handlers import ENDPOINTS, QUERY_MODELS
from chalicelib.api.http import IDEMPOTENCY_KEY_PATTERN, PROBLEM_JSON
from chalicelib.api.models import ID_MAX_LENGTH, ID_PATTERN, Problem

_REF = "#/components/schemas/{model}"
_ERRORS = {
    "400": "Malformed or missing fields",
    "401": "No token, or a bad or expired one",
    "403": "The token lacks the role this needs",
    "404": "Unknown, or not yours",
    "409": "Conflicts with the book: reserved or spent slice, reused key, already issued",
    "413": "Body over 256 KiB",
    "415": "Body not sent as application/json",
    "422": "Well-formed, but breaks a rule",
    "503": "A dependency is down; retry after Retry-After seconds",
}


def _query_parameters(name: str, endpoint: Any, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    """Each query parameter with the schema of its field in the operation's query model: the
    constraints the handler enforces, declared. Components the fields refer to (enums) are
    added to `schemas`."""
    model = QUERY_MODELS.get(name)
    if model is None:
        return [
            {"name": q, "in": "query", "required": False, "schema": {"type": "string"}}
            for q in endpoint.query
        ]
    schema = model.model_json_schema(ref_template=_REF)
    schemas.update(schema.pop("$defs", {}))
    required = set(schema.get("required", ()))
    params = []
    for q in endpoint.query:
        field = dict(schema["properties"][q])
        # An optional parameter is absent, never null: drop the null branch pydantic adds.
        options = [o for o in field.pop("anyOf", []) if o.get("type") != "null"]
        if len(options) == 1:
            field.update(options[0])
        field.pop("title", None)
        if field.get("default", ...) is None:
            del field["default"]
        description = field.pop("description", None)
        param = {"name": q, "in": "query", "required": q in required, "schema": field}
        if description:
            param["description"] = description
        params.append(param)
    return params


def _parameters(name: str, path: str, endpoint: Any, schemas: dict[str, Any]) -> list[dict]:
    params = [
        {
            "name": part[1:-1],
            "in": "path",
            "required": True,
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": ID_MAX_LENGTH,
                "pattern": ID_PATTERN,
            },
        }
        for part in path.split("/")
        if part.startswith("{")
    ]
    params += _query_parameters(name, endpoint, schemas)
    if endpoint.idempotent_write:
        params.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": True,
                "description": "1 to 128 printable ASCII characters (chalicelib.api.http).",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 128,
                    "pattern": IDEMPOTENCY_KEY_PATTERN,
                },
            }
        )
    return params


@cache
def document() -> dict[str, Any]:
    models: set[type[BaseModel]] = {Problem}
    for endpoint, _ in ENDPOINTS.values():
        models.add(endpoint.response)
        if endpoint.request is not None:
            models.add(endpoint.request)
    _, schemas = models_json_schema(
        [(model, "serialization") for model in models]
        + [(e.request, "validation") for e, _ in ENDPOINTS.values() if e.request is not None],
        ref_template=_REF,
    )
    paths: dict[str, dict[str, Any]] = {}
    components = schemas.get("$defs", {})
    for name, (endpoint, _) in sorted(ENDPOINTS.items()):
        responses: dict[str, Any] = {
            str(endpoint.status): {
                "description": endpoint.summary,
                "content": {
                    "application/json": {
                        "schema": {"$ref": _REF.format(model=endpoint.response.__name__)}
                    }
                },
            }
        }
        for code, text in _ERRORS.items():
            if code in ("401", "403") and not endpoint.authenticated:
                continue
            responses[code] = {
                "description": text,
                "content": {PROBLEM_JSON: {"schema": {"$ref": _REF.format(model="Problem")}}},
            }
        operation: dict[str, Any] = {
            "operationId": name,
            "summary": endpoint.summary,
            "parameters": _parameters(name, endpoint.path, endpoint, components),
            "responses": responses,
        }
        if endpoint.authenticated:
            operation["security"] = [{"bearer": []}]
        if endpoint.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": _REF.format(model=endpoint.request.__name__)}
                    }
                },
            }
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    paths["/v1/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {
                "200": {
                    "description": "The OpenAPI document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Certificates Domain",
            "version": chalicelib.__version__,
            "description": "Issue, slice, transfer, claim and withdraw Granular "
            "Certificates, kept in step with the registry.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
