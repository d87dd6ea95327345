"""The device in a fleet ([fleet] in edge.toml; off by default): releases up to NATS JetStream through a durable
outbox, heartbeats beside them, and the operator's signed desired state down from a JetStream key-value bucket
(agent/fleet/link.py). Nothing about a household goes up: only what the release module released.

Subjects and streams (the hub, hub/, creates the streams and buckets):
  edge.<device>.releases   stream EDGE_RELEASES (replicated, de-duplicated by Nats-Msg-Id)
  edge.<device>.health     stream EDGE_HEALTH (the last heartbeat per device)
  bucket edge_desired      key <device>: the device's signed document; key "fleet": the hub's
"""

RELEASES_STREAM = "EDGE_RELEASES"
HEALTH_STREAM = "EDGE_HEALTH"


def releases_subject(device: str) -> str:
    return f"edge.{device}.releases"


def health_subject(device: str) -> str:
    return f"edge.{device}.health"
