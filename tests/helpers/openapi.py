"""A body checked against a schema of the agent's OpenAPI document."""

from __future__ import annotations

from agent.api.openapi import SPEC


def validator(name: str):
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                               "components": SPEC["components"]})


def conforms(name: str, body) -> None:
    errors = [str(e) for e in validator(name).iter_errors(body)]
    assert not errors, (name, body, errors[:3])
