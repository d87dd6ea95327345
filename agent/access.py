"""May an organization have a window (and tag)? Facts of the configuration only, never of which households carry
what. No I/O; the API turns a refusal into its HTTP error, delivery and triggers into a withheld window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.config import WINDOWS, Level
from agent.ingest import TAG
from agent.parameters import permitted

if TYPE_CHECKING:
    from agent.registry import Organization


@dataclass(frozen=True)
class Denied:
    status: int
    error: str
    detail: str


def denied(level: Level, org: Organization, window: str, tag: str | None, tags: tuple[str, ...]) -> Denied | None:
    if window not in WINDOWS:
        return Denied(400, "bad_parameter", f"window must be one of {', '.join(WINDOWS)}")
    if window not in level.windows:
        return Denied(403, "window_not_permitted", f"level {level.name!r} may use windows {', '.join(level.windows)}")
    if tag is not None:
        if not TAG.fullmatch(tag):
            return Denied(400, "bad_parameter", "tag: 1-32 lowercase letters, digits, '_' or '-'")
        if tag not in tags:
            return Denied(400, "unknown_tag", f"tag must be one of the device's vocabulary: {', '.join(tags)}")
        if level.noisy and tag not in level.dp.tags:
            return Denied(403, "tag_not_released", f"level {level.name!r} is released channel tags "
                          f"{', '.join(level.dp.tags) or '(none)'} only")
        if window == "1s":
            return Denied(403, "window_not_permitted", "channel tags are released per minute or wider")
    needed = f"neighborhood_channel_{tag}" if tag else "neighborhood_power_consumption"
    if not permitted(needed, level, org.parameters):
        return Denied(403, "parameter_not_permitted", f"{needed} is not permitted for this organization")
    return None
