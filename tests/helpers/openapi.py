"""A body checked against a schema of the agent's OpenAPI document and, for a release record or a webhook payload,
converted into its Struct (agent/api/records.py): a record's Struct refuses a field it does not name."""

from __future__ import annotations

import msgspec

from agent.api import records
from agent.api.openapi import SPEC


def validator(name: str):
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                               "components": SPEC["components"]})


def conforms(name: str, body) -> None:
    errors = [str(e) for e in validator(name).iter_errors(body)]
    assert not errors, (name, body, errors[:3])
    struct = {kind.__name__: kind for kind in records.RECORDS}.get(name)
    if struct is not None:
        msgspec.convert(body, struct)  # says which field if the record is not its Struct
