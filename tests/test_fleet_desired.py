"""Desired state down, on a real agent (its API on 127.0.0.1): a signed document for this device installs the
fleet's organizations with their one key each; a bad signature, another device's document, an older version, a
past not-after time or an unknown level are refused whole, logged and shown in /health, and the running version
stays; a revoked key stops working at once; the accepted document is applied again after a restart.
(Delivery through the JetStream bucket: tests/test_fleet_cluster.py.)"""

from __future__ import annotations

import hashlib
import logging
import time
import pytest

from agent.config import FleetConfig
from agent.fleet import document
from agent.registry import new_secret
from tests.helpers.agent import make_config

KEY = document.new_private_key()
OTHER = document.new_private_key()


def fleet_config(tmp_path):
    fleet = FleetConfig(enabled=True, device_id="dev-a", servers=("nats://127.0.0.1:1",),
                        operator_public_key=document.public_key_text(KEY))
    return make_config(tmp_path, fleet=fleet)


def doc(version: int, orgs, device="dev-a", not_after=None, revoked=(), related=None) -> dict:
    return {"kind": "device", "device": device, "version": version, "not_after": not_after or time.time() + 3600,
            "organizations": orgs, "revoked": list(revoked), "related": related or {}}


def org(org_id: str, key: str, level: str = "dso") -> dict:
    return {"id": org_id, "name": org_id, "level": level, "key_hash": hashlib.sha256(key.encode()).hexdigest()}


async def test_a_signed_document_installs_organizations_and_refusals_are_shown(tmp_path, start_agent, caplog):
    running = await start_agent(fleet_config(tmp_path))
    link = running.agent.fleet
    key_a, key_b = new_secret("edge_org"), new_secret("edge_org")
    assert await link.offer(document.sign(doc(5, [org("org_a", key_a), org("org_b", key_b, "supplier")]), KEY))
    status, body = await running.get("/parameters", token=key_a)
    assert status == 200
    status, health = await running.get("/health")
    assert health["fleet"]["desired_version"] == 5 and health["fleet"]["refused"] is None

    caplog.set_level(logging.WARNING, "edge.fleet")
    refusals = {
        "bad_signature": document.sign(doc(6, []), OTHER),
        "wrong_device": document.sign(doc(6, [], device="dev-b"), KEY),
        "older_version": document.sign(doc(4, []), KEY),
        "expired": document.sign(doc(6, [], not_after=time.time() - 1), KEY),
        "unknown_level": document.sign(doc(6, [org("org_c", new_secret("edge_org"), "nobody")]), KEY),
        "unknown_household": document.sign(doc(6, [], related={"hh_0123": ["org_a"]}), KEY),
        "malformed": b'{"doc": 1}',
    }
    for error, envelope in refusals.items():
        assert not await link.offer(envelope)
        status, health = await running.get("/health")
        assert health["fleet"]["refused"]["error"] == error, error
        assert health["fleet"]["desired_version"] == 5  # the running one stays, whole
        assert error in caplog.text
        # nothing of a refused document was applied: both organizations still sign in, nothing else does
        assert (await running.get("/parameters", token=key_a))[0] == 200
        assert (await running.get("/parameters", token=key_b))[0] == 200
    assert set(running.agent.registry.organizations) == {"org_a", "org_b"}
    caplog.clear()  # the bucket is read again every heartbeat: a refused document is said once
    assert not await link.offer(refusals["malformed"])
    assert "refused" not in caplog.text


async def test_a_revoked_key_stops_working_and_the_document_survives_a_restart(tmp_path, start_agent):
    from agent.service import Agent
    from tests.helpers.agent import RunningAgent

    config = fleet_config(tmp_path)
    first = Agent(config)
    await first.start()
    running = RunningAgent(first)
    key_a, key_new = new_secret("edge_org"), new_secret("edge_org")
    household, token = await running.create_household()
    assert await running.agent.fleet.offer(document.sign(doc(1, [org("org_a", key_a)],
                                                       related={household: ["org_a"]}), KEY))
    assert (await running.get("/parameters", token=key_a))[0] == 200
    assert running.agent.registry.related("org_a") == {household}
    # revoked: the old key is refused at once; the organization's new key works
    revoked = hashlib.sha256(key_a.encode()).hexdigest()
    assert await running.agent.fleet.offer(document.sign(doc(2, [org("org_a", key_new)], revoked=[revoked]), KEY))
    assert (await running.get("/parameters", token=key_a))[0] == 401
    assert (await running.get("/parameters", token=key_new))[0] == 200
    assert running.agent.registry.related("org_a") == set()  # no longer marked by the document
    # a key both listed and revoked never signs in
    assert await running.agent.fleet.offer(document.sign(doc(3, [org("org_a", key_new)],
                                                       revoked=[hashlib.sha256(key_new.encode()).hexdigest()]), KEY))
    assert (await running.get("/parameters", token=key_new))[0] == 401
    assert await running.agent.fleet.offer(document.sign(doc(4, [org("org_a", key_new)]), KEY))
    await running.http.close()
    await first.stop()

    again = await start_agent(config)  # a restart: the accepted document is applied before anything runs
    assert again.agent.fleet.applied["version"] == 4
    assert (await again.get("/parameters", token=key_new))[0] == 200
    assert (await again.get("/parameters", token=key_a))[0] == 401


@pytest.mark.parametrize("bad", [{"servers": []}, {"operator_public_key": "not a key"}, {"windows": ["2m"]},
                                 {"device_id": "has space"}])


def test_fleet_config_is_checked_when_enabled(bad):
    from agent.config import ConfigError, parse_config

    fleet = {"enabled": True, "servers": ["nats://127.0.0.1:4222"],
             "operator_public_key": document.public_key_text(KEY), **bad}
    with pytest.raises(ConfigError) as err:
        parse_config({"auth": {"operator_token": "x" * 16}, "fleet": fleet})
    assert "fleet." in str(err.value)
    assert not parse_config({"auth": {"operator_token": "x" * 16}}).fleet.enabled  # off by default


STREET = {"kind": "exact", "windows": ["1s", "1m"], "parameters": ["neighborhood_*"]}


async def test_level_definitions_are_applied_whole_or_not_at_all(tmp_path, start_agent, caplog):
    from agent.service import Agent
    from tests.helpers.agent import RunningAgent

    config = fleet_config(tmp_path)
    first = Agent(config)
    await first.start()
    running = RunningAgent(first)
    link = running.agent.fleet
    key_a, key_b = new_secret("edge_org"), new_secret("edge_org")
    assert await link.offer(document.sign({**doc(1, [org("org_a", key_a, "street")]), "levels": {"street": STREET}},
                                          KEY))
    assert running.agent.config.levels["street"].windows == ("1s", "1m")
    status, body = await running.get("/parameters", token=key_a)  # the level's own parameters, at once
    permitted = {p["name"] for p in body["parameters"] if p["permitted"]}
    assert "neighborhood_power_consumption" in permitted and not any(n.startswith("household_") for n in permitted)
    status, health = await running.get("/health")
    assert health["fleet"]["levels"] == ["street"]

    # one invalid level (edge.toml's own checks) refuses everything in the document, the valid parts too
    caplog.set_level(logging.WARNING, "edge.fleet")
    bad = {"street": {**STREET, "windows": ["1s"]}, "broken": {"kind": "exact", "windows": ["2m"]}}
    assert not await link.offer(document.sign({**doc(2, [org("org_a", key_a, "street"), org("org_b", key_b)]),
                                               "levels": bad}, KEY))
    status, health = await running.get("/health")
    assert health["fleet"]["refused"]["error"] == "invalid_level"
    assert "levels.broken.windows" in health["fleet"]["refused"]["detail"] and "invalid_level" in caplog.text
    assert running.agent.config.levels["street"].windows == ("1s", "1m") and "broken" not in running.agent.config.levels
    assert (await running.get("/parameters", token=key_b))[0] == 401
    assert health["fleet"]["desired_version"] == 1

    # a level the document no longer defines is gone (edge.toml's levels stay); so is its organization's use of it
    assert await link.offer(document.sign(doc(3, [org("org_b", key_b)]), KEY))
    assert "street" not in running.agent.config.levels and "dso" in running.agent.config.levels
    assert await link.offer(document.sign({**doc(4, [org("org_a", key_a, "street")]), "levels": {"street": STREET}},
                                          KEY))
    await running.http.close()
    await first.stop()
    assert "street" not in config.levels  # edge.toml's levels again once stopped
    again = await start_agent(config)  # applied again at start, before anything runs
    assert again.agent.config.levels["street"].parameters == ("neighborhood_*",)
    assert (await again.get("/parameters", token=key_a))[0] == 200


def test_a_fleet_document_gives_a_device_only_its_own_subjects():
    from agent.fleet import device_permissions
    from hub.operator import new_nkey

    _, nkey = new_nkey()
    fleet = {"kind": "fleet", "version": 1, "not_after": time.time() + 60, "areas": {"north": ["dev-a"]},
             "devices": {"dev-a": {"nkey": nkey, **device_permissions("dev-a")}}}
    assert document.check(document.sign(fleet, KEY), KEY.public_key(), "fleet", time.time(), None)
    wider = {**device_permissions("dev-a"), "publish": ["edge.dev-a.>", "edge.dev-b.>"]}
    with pytest.raises(document.Refused) as err:
        document.check(document.sign({**fleet, "devices": {"dev-a": {"nkey": nkey, **wider}}}, KEY),
                       KEY.public_key(), "fleet", time.time(), None)
    assert err.value.error == "bad_permissions"
    with pytest.raises(document.Refused) as err:
        document.check(document.sign({**fleet, "devices": {"dev-a": {"nkey": "not-a-key", **wider}}}, KEY),
                       KEY.public_key(), "fleet", time.time(), None)
    assert err.value.error == "malformed"
