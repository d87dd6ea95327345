"""The operator's desired-state documents: signed with Ed25519, versioned, with a not-after time. No I/O.

Two kinds, each one JSON envelope {"doc": {...}, "signature": base64} where the signature is over the canonical
JSON of "doc" (sorted keys, no spaces, UTF-8):

- kind "device": what one device runs. Organizations of its area (id, name, level, key_hash = SHA-256 of the
  organization's one API key, parameters), level definitions (`levels`: [levels.NAME] tables as in edge.toml,
  checked by the same code, agent/config.py; they add to or replace edge.toml's levels of the same name), related
  households (device-local ids: this document goes to this device only, never to the hub), revoked key hashes.
  Delivered through the `edge_desired` bucket, key = device id.
- kind "fleet": what the hub and the servers' authorization need. Areas (device ids), organizations with their
  areas and key hashes, revoked key hashes, the level definitions, and each device's NATS identity (`devices`:
  {device: {nkey, publish, subscribe}}: its public nkey and permissions, never more than `device_permissions`);
  no household anything. Key `fleet` of the same bucket.

A document is taken whole or refused whole (`check`): bad signature, another device's, not newer than the one
running, past its not-after time, or a content error (unknown level, malformed id) each give one reason.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from agent.config import ConfigError, Level, parse_levels
from agent.fleet import DESIRED_BUCKET, NAME, device_permissions, public_key_from_text

BUCKET = DESIRED_BUCKET
FLEET_KEY = "fleet"
KEY_HASH = re.compile(r"^[0-9a-f]{64}$")
USER_NKEY = re.compile(r"^U[A-Z2-7]{55}$")  # a NATS user's public nkey


class Refused(ValueError):
    def __init__(self, error: str, detail: str):
        super().__init__(f"{error}: {detail}")
        self.error, self.detail = error, detail


@dataclass(frozen=True)
class FleetOrg:
    id: str
    name: str
    level: str
    key_hash: str
    areas: tuple[str, ...] = ()
    parameters: tuple[str, ...] | None = None


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- keys --------------------------------------------------------------------------------------
def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_text(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()


def private_key_from_text(text: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(text.strip(), validate=True))


def public_key_text(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


# --- signing and checking ----------------------------------------------------------------------
def sign(doc: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    signature = base64.b64encode(key.sign(canonical(doc))).decode()
    return canonical({"doc": doc, "signature": signature})


def verify(envelope: bytes, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The signed document, or Refused("bad_signature"/"malformed")."""
    try:
        outer = json.loads(envelope)
        doc, signature = outer["doc"], base64.b64decode(outer["signature"], validate=True)
        if not isinstance(doc, dict):
            raise TypeError("doc")
    except (ValueError, KeyError, TypeError):
        raise Refused("malformed", "not a signed desired-state envelope {\"doc\", \"signature\"}") from None
    try:
        public_key.verify(signature, canonical(doc))
    except InvalidSignature:
        raise Refused("bad_signature", "the signature does not verify with the operator's public key "
                      "([fleet] operator_public_key)") from None
    return doc


def check(envelope: bytes, public_key: Ed25519PublicKey, kind: str, now: float, running_version: int | None,
          device: str | None = None, levels: Mapping[str, Level] | None = None,
          tags: tuple[str, ...] = ()) -> dict[str, Any]:
    """The document if it may replace the running one; Refused with the one reason otherwise. `levels`: the
    device's own (edge.toml's), to which the document's are added; `tags`: its channel tags ([privacy] tags)."""
    doc = verify(envelope, public_key)
    if doc.get("kind") != kind:
        raise Refused("wrong_kind", f"a {doc.get('kind')!r} document, expected {kind!r}")
    version, not_after = doc.get("version"), doc.get("not_after")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise Refused("malformed", "version must be a positive integer")
    if not isinstance(not_after, (int, float)) or isinstance(not_after, bool):
        raise Refused("malformed", "not_after must be a UNIX time")
    if device is not None and doc.get("device") != device:
        raise Refused("wrong_device", f"the document is for device {doc.get('device')!r}, this is {device!r}")
    if running_version is not None and version <= running_version:
        raise Refused("older_version", f"version {version} is not newer than the running version "
                      f"{running_version}")
    if not_after <= now:
        raise Refused("expired", f"the document's not_after ({not_after:.0f}) has passed")
    if levels is None:  # the hub: no level is run there
        organizations(doc)  # content errors refuse the whole document
    else:
        organizations(doc, {**levels, **levels_of(doc, tags)})
    if kind == "device":
        related(doc)
    else:
        areas(doc)
        nats_users(doc)
    return doc


def levels_of(doc: dict[str, Any], tags: tuple[str, ...]) -> dict[str, Level]:
    """The level definitions a document carries, checked as edge.toml's are (one bad one refuses it whole)."""
    try:
        return parse_levels(doc.get("levels", {}), tags)
    except ConfigError as err:
        raise Refused("invalid_level", f"{err.key}: {err.reason}") from None


def nats_users(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{device: {"nkey", "publish", "subscribe"}} of a fleet document: each device's public nkey and its
    permissions, which may only narrow `device_permissions` (no device is given another's subjects)."""
    value = doc.get("devices", {})
    if not isinstance(value, dict):
        raise Refused("malformed", "devices must map device ids to their NATS identity")
    for name, user in value.items():
        if not NAME.fullmatch(name) or not isinstance(user, dict) or not USER_NKEY.fullmatch(str(user.get("nkey"))):
            raise Refused("malformed", f"device {name!r}: a NATS user's public nkey (U...) is required")
        allowed = device_permissions(name)
        for kind in ("publish", "subscribe"):
            subjects = user.get(kind)
            if not isinstance(subjects, list) or not set(subjects) <= set(allowed[kind]):
                raise Refused("bad_permissions", f"device {name}: {kind} may only name its own subjects "
                              f"({', '.join(allowed[kind])})")
    return value


def organizations(doc: dict[str, Any], levels: Mapping[str, Level] | None = None) -> dict[str, FleetOrg]:
    """The organizations a document installs (revoked key hashes left out)."""
    revoked = set(_list(doc, "revoked", str))
    out: dict[str, FleetOrg] = {}
    for item in _list(doc, "organizations", dict):
        org_id, level, key_hash = item.get("id"), item.get("level"), item.get("key_hash")
        if not isinstance(org_id, str) or not NAME.fullmatch(org_id) or org_id in out:
            raise Refused("malformed", f"organization id {org_id!r}: missing, malformed or listed twice")
        if not isinstance(key_hash, str) or not KEY_HASH.fullmatch(key_hash):
            raise Refused("malformed", f"organization {org_id}: key_hash must be 64 lowercase hex digits")
        if levels is not None and level not in levels:
            raise Refused("unknown_level", f"organization {org_id}: level {level!r} is not defined on this device")
        name = item.get("name", org_id)
        parameters = item.get("parameters")
        if parameters is not None and not (isinstance(parameters, list) and all(isinstance(p, str) for p in parameters)):
            raise Refused("malformed", f"organization {org_id}: parameters must be a list of names")
        if key_hash in revoked:
            continue  # its key is revoked: it cannot sign in anywhere until the operator gives it a new one
        out[org_id] = FleetOrg(org_id, str(name)[:100], str(level), key_hash,
                               tuple(item.get("areas", ())), None if parameters is None else tuple(parameters))
    return out


def related(doc: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """{household id: organization ids} the operator marked related on this device."""
    value = doc.get("related", {})
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, list)
                                              and all(isinstance(o, str) for o in v) for k, v in value.items()):
        raise Refused("malformed", "related must map household ids to lists of organization ids")
    return {k: tuple(v) for k, v in value.items()}


def areas(doc: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    value = doc.get("areas", {})
    if not isinstance(value, dict) or not all(NAME.fullmatch(k) and isinstance(v, list) and all(
            isinstance(d, str) and NAME.fullmatch(d) for d in v) for k, v in value.items()):
        raise Refused("malformed", "areas must map area ids to lists of device ids")
    return {k: tuple(v) for k, v in value.items()}


def _list(doc: dict[str, Any], key: str, kind: type) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise Refused("malformed", f"{key} must be a list")
    return value
