"""Red team 6: a household's appliance "test" reads any appliance on the device's LAN, another household's too.

`POST /households/me/appliances` accepts any private LAN address (agent/api/household_actions.py, `new_appliance`:
the address rules only, no check that the household owns the device at that address, none against another
household's appliance at the same address), and `GET /households/me/appliances/{id}/status` has the device read
it (`appliance_status`: Shelly `Switch.GetStatus`, with the power it meters). Households' Shellys answer without
authentication (drivers/appliances/shelly.py: digest auth is not supported, so it must be off) and are on the
device's LAN (the device switches them). So one household of an organization's own, with nothing but its token,
reads the target's appliance, on/off and metered watts, whenever it likes: no aggregate, no cohort, no noise,
no consent. The status error ("not reachable (...)") also makes the device a scanner of its LAN, to find it.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from aiohttp import web

from tests.helpers.agent import make_config
from tests.helpers.appliances import FakeShelly


class MeteringShelly(FakeShelly):
    """A Shelly Plus 1PM: its relay and the power it meters (`Switch.GetStatus`)."""

    apower = 0.0

    async def get_status(self, request: web.Request) -> web.Response:
        return web.json_response({"id": 0, "output": self.state[0], "apower": self.apower})

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        app.router.add_get("/rpc/Switch.GetStatus", self.get_status)


@pytest.mark.xfail(strict=True, reason="red team 6 R6-9: any household may register another household's appliance "
                   "address and have the device read it (household_actions.new_appliance / appliance_status): the "
                   "target's appliance's power, exact, to an organization's own household")
async def test_a_household_cannot_read_another_households_appliance(tmp_path, start_agent):
    config = make_config(tmp_path)
    # the tests' appliances listen on loopback; on a device they are on its LAN (private addresses, allowed)
    running = await start_agent(replace(config, delivery=replace(config.delivery, allow_private_endpoints=True)))
    heat_pump = MeteringShelly()
    await heat_pump.start()
    try:
        _, target = await running.create_household()
        status, out = await running.call("POST", "/households/me/appliances", token=target, json={
            "name": "heat pump", "driver": "shelly", "address": heat_pump.address})
        assert status == 201, out
        _, spy = await running.create_household()  # an employee's home of some organization
        status, out = await running.call("POST", "/households/me/appliances", token=spy, json={
            "name": "my plug", "driver": "shelly", "address": heat_pump.address})
        read = []
        if status == 201:
            truth = [0.0, 1830.5, 2210.0, 45.2, 0.0, 1990.1]
            for watts in truth:
                heat_pump.apower, heat_pump.state[0] = watts, watts > 0
                status, state = await running.call("GET", f"/households/me/appliances/{out['id']}/status", token=spy)
                if status == 200:
                    read.append(state["power_w"])
            recovered = sum(abs(r - t) <= 1 for r, t in zip(read, truth)) / len(truth)
        else:
            recovered = 0.0
        assert not read, f"the spy read the target's heat pump: {read} ({recovered:.0%} within 1 W)"
    finally:
        await heat_pump.runner.cleanup()
