"""May an organization have a window (and tag)? Facts of the configuration only, never of which households carry
what. No I/O; the API turns a refusal into its HTTP error, delivery and triggers into a withheld window."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from agent.config import WINDOWS, Level
from agent.errors import DomainError
from agent.ingest import TAG
from agent.parameters import permitted

if TYPE_CHECKING:
    from agent.registry import Organization


class AccessCode(Enum):
    BAD_PARAMETER = "bad_parameter"  # a window or tag that is not one at all
    UNKNOWN_TAG = "unknown_tag"
    WINDOW_NOT_PERMITTED = "window_not_permitted"
    TAG_NOT_RELEASED = "tag_not_released"
    PARAMETER_NOT_PERMITTED = "parameter_not_permitted"


class Denied(DomainError[AccessCode]):
    """Why not: returned (delivery withholds the window), raised by the API."""


def denied(level: Level, org: Organization, window: str, tag: str | None, tags: tuple[str, ...]) -> Denied | None:
    if window not in WINDOWS:
        return Denied(AccessCode.BAD_PARAMETER, f"window must be one of {', '.join(WINDOWS)}")
    if window not in level.windows:
        return Denied(AccessCode.WINDOW_NOT_PERMITTED,
                      f"level {level.name!r} may use windows {', '.join(level.windows)}")
    if tag is not None:
        if not TAG.fullmatch(tag):
            return Denied(AccessCode.BAD_PARAMETER, "tag: 1-32 lowercase letters, digits, '_' or '-'")
        if tag not in tags:
            return Denied(AccessCode.UNKNOWN_TAG, f"tag must be one of the device's vocabulary: {', '.join(tags)}")
        if level.noisy and tag not in level.dp.tags:
            return Denied(AccessCode.TAG_NOT_RELEASED, f"level {level.name!r} is released channel tags "
                          f"{', '.join(level.dp.tags) or '(none)'} only")
        if window == "1s":
            return Denied(AccessCode.WINDOW_NOT_PERMITTED, "channel tags are released per minute or wider")
    needed = f"neighborhood_channel_{tag}" if tag else "neighborhood_power_consumption"
    if not permitted(needed, level, org.parameters):
        return Denied(AccessCode.PARAMETER_NOT_PERMITTED, f"{needed} is not permitted for this organization")
    return None
