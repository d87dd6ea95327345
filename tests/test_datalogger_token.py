"""Red team 7, "Datalogger token": an organization that installed or controls a household's datalogger holds the
token the datalogger posts with. That token must post the household's readings and nothing else: not its consents,
not which organizations it allows, not its pages, endpoints or appliances. Rotating it ends only itself."""

from __future__ import annotations

from tinydb import where

from tests.helpers.agent import make_config
from tests.helpers.web import Browserless

READING = {"timestamp": "2026-01-01T00:00:00Z", "power_import_w": 100}


async def _household(running):
    status, body = await running.call("POST", "/households", json={})
    assert status == 201, body
    return body["id"], body["token"], body["datalogger_token"]


async def test_the_datalogger_token_posts_readings_and_nothing_else(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    org_id, _ = await running.create_org("Installer Co", "dso")
    household_id, token, datalogger = await _household(running)
    assert datalogger.startswith("edge_dl_") and datalogger != token
    # what the organization holding the datalogger's token tries
    attempts = [
        ("PUT", f"/households/me/consents/{org_id}/aggregates", {}),
        ("GET", "/households/me", {}),
        ("GET", "/households/me/organizations", {}),
        ("GET", "/households/me/consents", {}),
        ("GET", "/households/me/consents/history", {}),
        ("PUT", "/households/me/notify", {"json": {"url": "https://example.com/notify"}}),
        ("GET", "/households/me/notifications", {}),
        ("POST", "/households/me/appliances", {"json": {"name": "Heater", "driver": "shelly",
                                                        "address": "http://192.168.1.20"}}),
        ("GET", "/households/me/triggers", {}),
        ("GET", "/parameters", {}),
        ("GET", "/meters", {}),
        ("GET", "/data", {}),
    ]
    for method, path, kwargs in attempts:
        status, body = await running.call(method, path, token=datalogger, **kwargs)
        assert status == 403 and body["error"] == "forbidden", (method, path, status, body)
    assert running.agent.registry.consents_of(household_id) == []
    # the pages' sign-in refuses it as it refuses an organization's key
    browser = Browserless(running.base)
    await browser.get("/ui/sign-in")
    status, html, _ = await browser.post("/ui/sign-in", {"token": datalogger})
    assert status == 403 and "only posts readings" in html
    assert (await browser.get("/ui/me"))[0] == 303  # no session: back to the sign-in
    await browser.close()
    # what it is for: the household's readings, over both ingest paths
    assert (await running.call("POST", "/readings", token=datalogger, json=READING))[0] == 201
    status, _ = await running.call("POST", "/api/v1/datalogger/dsmrreading", token=None,
                                   headers={"X-AUTHKEY": datalogger}, data={"telegram": "/x\r\n!\r\n"})
    assert status not in (401, 403)
    assert running.agent.pipeline.latest[household_id].power_import_w == 100
    # and the household's own token still posts (dataloggers set up before keep working)
    later = {**READING, "timestamp": "2026-01-01T00:00:10Z", "power_import_w": 200}
    assert (await running.call("POST", "/readings", token=token, json=later))[0] == 201


async def test_rotating_one_token_ends_only_that_token(tmp_path, start_agent):
    running = await start_agent(make_config(tmp_path))
    household_id, token, datalogger = await _household(running)
    status, body = await running.call("POST", f"/households/{household_id}/datalogger_token")
    assert status == 200 and body["id"] == household_id
    fresh = body["datalogger_token"]
    assert (await running.call("POST", "/readings", token=datalogger, json=READING))[0] == 401
    assert (await running.call("POST", "/readings", token=fresh, json=READING))[0] == 201
    # the household's token and its sessions are untouched by the datalogger's rotation
    assert (await running.call("GET", "/households/me", token=token))[0] == 200
    assert running.agent.audit.entries(who="operator")[-1]["action"] == "household.rotate_datalogger_token"
    # the household's rotation leaves the datalogger posting
    status, body = await running.call("POST", f"/households/{household_id}/token")
    assert status == 200 and "datalogger_token" not in body
    later = {**READING, "timestamp": "2026-01-01T00:00:10Z"}
    assert (await running.call("POST", "/readings", token=fresh, json=later))[0] == 201
    assert (await running.call("GET", "/households/me", token=token))[0] == 401
    # deletion ends both
    assert (await running.call("DELETE", f"/households/{household_id}"))[0] == 204
    later = {**READING, "timestamp": "2026-01-01T00:00:20Z"}
    assert (await running.call("POST", "/readings", token=fresh, json=later))[0] == 401


async def test_a_household_made_before_has_none_until_the_operator_makes_one(tmp_path, start_agent):
    config = make_config(tmp_path)
    running = await start_agent(config)
    household_id, token, datalogger = await _household(running)
    # a data directory of before: its record has no datalogger hash
    running.agent.registry.db.table("households").update(lambda doc: doc.pop("datalogger_hash"),
                                                         where("id") == household_id)
    await running.http.close()
    await running.agent.stop()
    again = await start_agent(config)
    assert (await again.call("POST", "/readings", token=datalogger, json=READING))[0] == 401
    status, body = await again.call("GET", f"/households/{household_id}")
    assert status == 200 and body["has_datalogger_token"] is False
    status, body = await again.call("POST", f"/households/{household_id}/datalogger_token")
    assert status == 200
    assert (await again.call("POST", "/readings", token=body["datalogger_token"], json=READING))[0] == 201
    assert (await again.call("GET", f"/households/{household_id}"))[1]["has_datalogger_token"] is True
    # stored hashed, like the household's token, and there after a restart
    on_disk = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert body["datalogger_token"].encode() not in on_disk
    await again.http.close()
    await again.agent.stop()
    third = await start_agent(config)
    later = {**READING, "timestamp": "2026-01-01T00:00:10Z"}
    assert (await third.call("POST", "/readings", token=body["datalogger_token"], json=later))[0] == 201
    assert (await third.call("GET", "/households/me", token=token))[0] == 200
