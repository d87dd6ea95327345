"""The device in a fleet ([fleet] in edge.toml; off by default): releases up to NATS JetStream through a durable
outbox, heartbeats beside them, and the operator's signed desired state down from a JetStream key-value bucket
(agent/fleet/link.py). Nothing about a household goes up: only what the release module released.

Subjects and streams (the hub, hub/, creates the streams and buckets):
  edge.<device>.releases   stream EDGE_RELEASES (replicated, de-duplicated by Nats-Msg-Id)
  edge.<device>.health     stream EDGE_HEALTH (the last heartbeat per device)
  bucket edge_desired      key <device>: the device's signed document; key "fleet": the hub's

A device signs in to NATS with its own nkey and may use only its own subjects (`device_permissions`): publish
under edge.<device>., read its own key of the bucket (a direct get of it, and its key's subject live), get the
last message of its own releases subject, and receive replies only on its own inbox prefix. The operator's
`edge-hub nats-auth` writes these into the servers' authorization file from the signed fleet document.
"""

import base64
import re

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # device, area and organization ids: NATS-token safe
RELEASES_STREAM = "EDGE_RELEASES"
HEALTH_STREAM = "EDGE_HEALTH"
DESIRED_BUCKET = "edge_desired"


def releases_subject(device: str) -> str:
    return f"edge.{device}.releases"


def health_subject(device: str) -> str:
    return f"edge.{device}.health"


def desired_subject(device: str) -> str:
    """The subject a put of the device's key in the bucket is published on."""
    return f"$KV.{DESIRED_BUCKET}.{device}"


def direct_get_subject(stream: str, subject: str) -> str:
    """JetStream's direct get of a subject's last message: the subject is in the request's, so a permission can
    name it (the body form, $JS.API.STREAM.MSG.GET, could ask for any subject)."""
    return f"$JS.API.DIRECT.GET.{stream}.{subject}"


def inbox_prefix(device: str) -> str:
    """Replies to the device (JetStream acks, direct gets) come only here: no device reads another's."""
    return f"_INBOX_{device}"


def device_permissions(device: str) -> dict[str, list[str]]:
    """Everything a device may do on NATS, and nothing of another device."""
    return {"publish": [f"edge.{device}.>",
                        direct_get_subject(f"KV_{DESIRED_BUCKET}", desired_subject(device)),
                        direct_get_subject(RELEASES_STREAM, releases_subject(device))],
            "subscribe": [f"{inbox_prefix(device)}.>", desired_subject(device)]}


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """The operator's public key as edge.toml and the hub write it (base64 of the 32 raw bytes)."""
    raw = base64.b64decode(text.strip(), validate=True)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes (44 base64 characters)")
    return Ed25519PublicKey.from_public_bytes(raw)
