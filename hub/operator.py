"""The operator's tooling: register an organization once for its areas, assign devices (with their NATS nkey),
define levels, mark related households, revoke a key; each change signs a new version of the `fleet` document
and of every device document it touches, and puts them in the `edge_desired` bucket, where the hub and the
devices watch them. `authorization` writes the nats-servers' authorization block from the fleet document: the
hub's user, and each device's nkey with only its own subjects.

The current documents in the bucket are the state (each verified with the operator's key before it is built
upon). A version is the time in milliseconds, or one more than the last if the clock is behind.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sys
import time

from agent.config import DEFAULT_TAGS, parse_levels
from agent.fleet import device_permissions, document
from agent.fleet.document import BUCKET, FLEET_KEY
from agent.registry import new_secret

VALID_DAYS = 30


class Operator:
    def __init__(self, js, private_key, valid_days: float = VALID_DAYS, clock=time.time):
        self.js = js
        self.key = private_key
        self.public_key = private_key.public_key()
        self.valid_s = valid_days * 86400
        self.clock = clock

    async def _bucket(self):
        return await self.js.key_value(BUCKET)

    async def current(self, key: str) -> dict | None:
        from hub.setup import desired

        value = await desired(self.js, key)  # the leader's: never an older document to build upon
        if value is None:
            return None
        try:
            return document.verify(value, self.public_key)
        except document.Refused as err:  # not ours (forged, or another key's): never built upon
            print(f"edge-hub: ignoring the document at {key!r}: {err}", file=sys.stderr)
            return None

    async def _fleet(self) -> dict:
        return await self.current(FLEET_KEY) or {"kind": "fleet", "version": 0, "areas": {}, "organizations": [],
                                                  "revoked": []}

    def _next(self, doc: dict) -> dict:
        now = self.clock()
        doc = dict(doc)
        doc["version"] = max(int(now * 1000), int(doc.get("version", 0)) + 1)
        doc["issued_at"] = now
        doc["not_after"] = now + self.valid_s
        return doc

    async def publish(self, key: str, doc: dict) -> dict:
        kv = await self._bucket()
        doc = self._next(doc)
        await kv.put(key, document.sign(doc, self.key))
        return doc

    async def _publish_fleet_and_devices(self, fleet: dict, devices: set[str]) -> dict:
        fleet = await self.publish(FLEET_KEY, fleet)
        for device in sorted(devices):
            await self.publish_device(device, fleet)
        return fleet

    async def publish_device(self, device: str, fleet: dict | None = None, related: dict | None = None) -> dict:
        """The device's document from the fleet's: the organizations of its area, revocations, its related
        households (kept from its current document unless given)."""
        fleet = fleet or await self._fleet()
        area = next((a for a, ds in fleet["areas"].items() if device in ds), None)
        current = await self.current(device) or {}
        doc = {"kind": "device", "device": device, "area": area, "version": current.get("version", 0),
               "organizations": [{k: v for k, v in o.items() if k != "areas"} for o in fleet["organizations"]
                                 if area in o.get("areas", [])],
               "revoked": list(fleet.get("revoked", [])), "levels": dict(fleet.get("levels", {})),
               "related": current.get("related", {}) if related is None else related}
        return await self.publish(device, doc)

    # --- the commands --------------------------------------------------------------------------
    async def register_org(self, name: str, level: str, areas: list[str]) -> tuple[dict, str]:
        """A new organization for these areas; its one API key is returned once and stored nowhere (its hash
        goes into the documents)."""
        fleet = await self._fleet()
        api_key = new_secret("edge_org")
        org = {"id": "org_" + secrets.token_hex(6), "name": name, "level": level,
               "key_hash": hashlib.sha256(api_key.encode()).hexdigest(), "areas": sorted(set(areas))}
        fleet["organizations"] = [*fleet["organizations"], org]
        await self._publish_fleet_and_devices(fleet, self._devices_of(fleet, areas))
        return org, api_key

    async def revoke_org_key(self, org_id: str) -> dict:
        fleet = await self._fleet()
        org = next((o for o in fleet["organizations"] if o["id"] == org_id), None)
        if org is None:
            raise KeyError(f"no organization {org_id!r}")
        fleet["revoked"] = sorted(set(fleet.get("revoked", [])) | {org["key_hash"]})
        return await self._publish_fleet_and_devices(fleet, self._devices_of(fleet, org.get("areas", [])))

    async def assign_device(self, device: str, area: str, nkey: str | None = None) -> dict:
        """A device in an area; `nkey`: its public NATS nkey (edge-hub device-key), with its permissions."""
        if not document.NAME.fullmatch(device) or not document.NAME.fullmatch(area):
            raise ValueError("device and area ids: 1-64 letters, digits, '_' or '-'")
        if nkey is not None and not document.USER_NKEY.fullmatch(nkey):
            raise ValueError("--nkey: a NATS user's public nkey (U followed by 55 characters)")
        fleet = await self._fleet()
        areas = {a: [d for d in ds if d != device] for a, ds in fleet["areas"].items()}
        areas.setdefault(area, []).append(device)
        fleet["areas"] = {a: sorted(ds) for a, ds in areas.items() if ds}
        if nkey is not None:
            fleet["devices"] = {**fleet.get("devices", {}), device: {"nkey": nkey, **device_permissions(device)}}
        return await self._publish_fleet_and_devices(fleet, {device})

    async def set_levels(self, levels: dict) -> dict:
        """Level definitions ([levels.NAME] tables) for every device, whole: checked here as a device checks
        them (with the default channel tags; a device with other tags says so in its /health)."""
        parse_levels(levels, DEFAULT_TAGS)  # a ConfigError names the key
        fleet = await self._fleet()
        fleet["levels"] = levels
        return await self._publish_fleet_and_devices(fleet, {d for ds in fleet["areas"].values() for d in ds})

    async def relate(self, device: str, household: str, org_ids: list[str]) -> dict:
        current = await self.current(device) or {}
        related = dict(current.get("related", {}))
        if org_ids:
            related[household] = sorted(set(org_ids))
        else:
            related.pop(household, None)
        return await self.publish_device(device, related=related)

    @staticmethod
    def _devices_of(fleet: dict, areas) -> set[str]:
        return {d for a in areas for d in fleet["areas"].get(a, [])}


def authorization(fleet: dict | None, hub_nkey: str) -> str:
    """The nats-server `authorization` block: the hub's user (everything), each device of the fleet document
    with its nkey and only its permissions. Include it from each server's configuration; reload after a change."""
    users = [f"    {{ nkey: {hub_nkey} }}"]
    for device, user in sorted(document.nats_users(fleet or {}).items()):
        allow = {kind: ", ".join(json.dumps(s) for s in user[kind]) for kind in ("publish", "subscribe")}
        users.append(f"    {{ nkey: {user['nkey']}, permissions: {{ publish: {{ allow: [{allow['publish']}] }}, "
                     f"subscribe: {{ allow: [{allow['subscribe']}] }} }} }}  # {device}")
    return "authorization {\n  users: [\n" + "\n".join(users) + "\n  ]\n}\n"


def dumps(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def new_nkey() -> tuple[str, str]:
    """A NATS user's nkey: (seed, the secret the device keeps; its public key, for the fleet document)."""
    import nkeys

    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode(), nkeys.from_seed(bytearray(seed)).public_key.decode()
