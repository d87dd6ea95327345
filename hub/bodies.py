"""The hub's request bodies as typed schemas (msgspec Structs, as the device's agent/api/bodies.py): the decoding
with precise errors and the OpenAPI document's request schema (hub/openapi.py) come from them. What a body means
(an area the organization may read, an endpoint that may be reached) is the handler's to check."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from agent.api.bodies import Body
from hub.service import WIDTHS


class SubscribeIn(Body):
    endpoint: Annotated[str, Meta(description="https:// URL")]
    area: str
    # checked by the handler, after the area (an unknown area is a 404 first)
    window: Annotated[str, Meta(extra_json_schema={"enum": list(WIDTHS)})] = "15m"
    tag: Annotated[str, Meta(description="letters, digits, '_' or '-'")] | None = None


BODIES = (SubscribeIn,)
