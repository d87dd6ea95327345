"""The operator's desired-state documents (agent/fleet/document.py) on data: signed with Ed25519 over canonical
JSON, taken whole or refused whole with one reason each, device and fleet content checked. tests/test_fleet_desired.py
applies them to a running agent."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config import DEFAULT_LEVELS
from agent.fleet import device_permissions, public_key_from_text
from agent.fleet import document
from agent.fleet.document import FleetOrg, Refused

KEY = document.new_private_key()
PUBLIC = KEY.public_key()
NOW = 1_790_000_000.0
HASH_A, HASH_B = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
NKEY = "U" + "A" * 55


def device_doc(version: int = 2, **more) -> dict:
    return {"kind": "device", "device": "dev-a", "version": version, "not_after": NOW + 3600,
            "organizations": [{"id": "org_a", "name": "Grid Co", "level": "dso", "key_hash": HASH_A}], **more}


def fleet_doc(**more) -> dict:
    return {"kind": "fleet", "version": 2, "not_after": NOW + 3600, "areas": {"north": ["dev-a", "dev-b"]},
            "devices": {"dev-a": {"nkey": NKEY, **device_permissions("dev-a")}}, **more}


def check(doc: dict, kind: str = "device", running: int | None = 1, key=KEY, **kw) -> dict:
    return document.check(document.sign(doc, key), PUBLIC, kind, NOW, running, **kw)


def refusal(doc: dict | bytes, kind: str = "device", **kw) -> str:
    with pytest.raises(Refused) as refused:
        if isinstance(doc, bytes):
            document.check(doc, PUBLIC, kind, NOW, 1, **kw)
        else:
            check(doc, kind, **kw)
    return refused.value.error


def test_a_signed_envelope_is_canonical_json_and_verifies():
    doc = {"b": [1, "ü"], "a": {"y": 1, "x": None}}
    envelope = document.sign(doc, KEY)
    assert envelope.startswith(b'{"doc":{"a":{"x":null,"y":1},"b":[1,"\xc3\xbc"]},"signature":"')
    signature = base64.b64decode(json.loads(envelope)["signature"])
    PUBLIC.verify(signature, b'{"a":{"x":null,"y":1},"b":[1,"\xc3\xbc"]}')  # the library's own check
    assert document.verify(envelope, PUBLIC) == doc
    # the same document with its keys in another order and spaces verifies too: the signature is over its content
    reordered = {"b": [1, "ü"], "a": {"x": None, "y": 1}}
    spaced = json.dumps({"signature": json.loads(envelope)["signature"], "doc": reordered}, indent=2).encode()
    assert document.verify(spaced, PUBLIC) == doc


def test_keys_round_trip_through_their_text():
    text = document.private_key_text(KEY)
    again = document.private_key_from_text(text + "\n")
    assert document.public_key_text(again) == document.public_key_text(KEY)
    public = public_key_from_text(document.public_key_text(KEY))
    assert isinstance(public, Ed25519PublicKey)
    assert document.verify(document.sign({"x": 1}, again), public) == {"x": 1}
    with pytest.raises(ValueError):
        document.private_key_from_text("not base64!")
    with pytest.raises(ValueError):
        public_key_from_text(base64.b64encode(b"short").decode())


@pytest.mark.parametrize("envelope", [b"", b"[]", b'{"doc": {}}', b'{"doc": [], "signature": ""}',
                                      b'{"doc": {}, "signature": "***"}', b"\xff"])
def test_what_is_not_an_envelope_is_malformed(envelope):
    assert refusal(envelope) == "malformed"


def test_a_changed_document_or_another_key_does_not_verify():
    envelope = json.loads(document.sign(device_doc(), KEY))
    envelope["doc"]["version"] = 99
    assert refusal(json.dumps(envelope).encode()) == "bad_signature"
    assert refusal(device_doc(), key=document.new_private_key()) == "bad_signature"


@pytest.mark.parametrize("change,error", [
    ({"kind": "fleet"}, "wrong_kind"),
    ({"version": 0}, "malformed"), ({"version": True}, "malformed"), ({"version": "3"}, "malformed"),
    ({"not_after": "tomorrow"}, "malformed"), ({"not_after": True}, "malformed"),
    ({"device": "dev-b"}, "wrong_device"),
    ({"version": 1}, "older_version"),
    ({"not_after": NOW}, "expired"),
    ({"organizations": [{"id": "org_a", "level": "nobody", "key_hash": HASH_A}]}, "unknown_level"),
    ({"organizations": [{"id": "org a", "level": "dso", "key_hash": HASH_A}]}, "malformed"),
    ({"organizations": [{"id": "org_a", "level": "dso", "key_hash": HASH_A.upper()}]}, "malformed"),
    ({"organizations": [{"id": "org_a", "level": "dso", "key_hash": HASH_A},
                        {"id": "org_a", "level": "dso", "key_hash": HASH_B}]}, "malformed"),
    ({"organizations": [{"id": "org_a", "level": "dso", "key_hash": HASH_A, "parameters": "all"}]}, "malformed"),
    ({"organizations": {"org_a": {}}}, "malformed"),
    ({"revoked": "all"}, "malformed"),
    ({"related": {"hh_1": "org_a"}}, "malformed"),
    ({"levels": {"street": {"kind": "exact", "windows": ["7s"]}}}, "invalid_level"),
    ({"organizations": [{"id": "org_a\n", "level": "dso", "key_hash": HASH_A}]}, "malformed"),
    ({"organizations": [{"id": "org_a", "level": "dso", "key_hash": HASH_A + "\n"}]}, "malformed"),
])
def test_a_device_document_is_refused_whole_for_one_reason(change, error):
    assert refusal(device_doc(**change), device="dev-a", levels=DEFAULT_LEVELS) == error


def test_a_device_document_that_may_replace_the_running_one():
    doc = device_doc(3, related={"hh_1": ["org_a"]}, revoked=[HASH_B],
                     organizations=[{"id": "org_a", "name": "x" * 300, "level": "street", "key_hash": HASH_A,
                                     "parameters": ["neighborhood_size"], "areas": ["north"]},
                                    {"id": "org_b", "level": "dso", "key_hash": HASH_B}],
                     levels={"street": {"kind": "exact", "windows": ["1s", "1m"], "parameters": ["neighborhood_*"]}})
    assert check(doc, device="dev-a", levels=DEFAULT_LEVELS) == doc
    assert check(doc, running=None, device="dev-a", levels=DEFAULT_LEVELS) == doc  # nothing running yet
    assert document.organizations(doc) == {  # org_b's key is revoked: it is left out
        "org_a": FleetOrg("org_a", "x" * 100, "street", HASH_A, ("north",), ("neighborhood_size",))}
    assert document.related(doc) == {"hh_1": ("org_a",)}
    assert set(document.levels_of(doc, ())) == {"street"}
    assert document.organizations({"organizations": [{"id": "o", "level": "dso", "key_hash": HASH_A}]})["o"].name == "o"


def test_the_hub_checks_a_fleet_document_without_levels():
    assert check(fleet_doc(), kind="fleet", running=None) == fleet_doc()
    assert document.areas(fleet_doc()) == {"north": ("dev-a", "dev-b")}
    assert document.nats_users(fleet_doc())["dev-a"]["nkey"] == NKEY
    # the hub runs no level: an organization's level is not checked there
    odd = fleet_doc(organizations=[{"id": "org_a", "level": "anything", "key_hash": HASH_A}])
    assert check(odd, kind="fleet", running=None) == odd


@pytest.mark.parametrize("change,error", [
    ({"areas": {"north": "dev-a"}}, "malformed"), ({"areas": {"no rth": ["dev-a"]}}, "malformed"),
    ({"areas": {"north": ["dev a"]}}, "malformed"),
    ({"devices": []}, "malformed"), ({"devices": {"dev-a": {"nkey": "N" + "A" * 55}}}, "malformed"),
    ({"devices": {"dev-a": {"nkey": NKEY, "publish": ["edge.dev-b.>"], "subscribe": []}}}, "bad_permissions"),
    ({"devices": {"dev-a": {"nkey": NKEY, "publish": [], "subscribe": device_permissions("dev-b")["subscribe"]}}},
     "bad_permissions"),
    ({"devices": {"dev-a": {"nkey": NKEY, "publish": [], "subscribe": "edge.>"}}}, "bad_permissions"),
    ({"kind": "device"}, "wrong_kind"),
    ({"areas": {"north\n": ["dev-a"]}}, "malformed"),
    ({"areas": {"north": ["dev-a\n"]}}, "malformed"),
    ({"devices": {"dev-a": {"nkey": NKEY + "\n", **device_permissions("dev-a")}}}, "malformed"),
])
def test_a_fleet_document_is_refused_whole_for_one_reason(change, error):
    assert refusal(fleet_doc(**change), kind="fleet") == error


def test_a_device_may_be_given_fewer_subjects_than_its_own():
    narrower = fleet_doc(devices={"dev-a": {"nkey": NKEY, "publish": device_permissions("dev-a")["publish"][:1],
                                            "subscribe": []}})
    assert check(narrower, kind="fleet", running=None) == narrower
