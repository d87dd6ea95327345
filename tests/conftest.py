"""The fixtures every test file may use: a pseudo-terminal pair, a running agent; the hardware-in-loop options.
What tests share besides fixtures is in tests/helpers/."""

from __future__ import annotations

import pytest

from agent.config import Config
from tests.helpers.agent import RunningAgent
from tests.helpers.pty import PtyPair

# Test files written before tests/helpers/ imported these from here; they still can, for now, but
# tests/test_layout.py fails and says where each one lives.
from tests.helpers.agent import OPERATOR_TOKEN, make_config  # noqa: E402, F401
from tests.helpers.clock import StepClock  # noqa: E402, F401
from tests.helpers.telegrams import TELEGRAM_PROFILES, TELEGRAMS, telegram_bytes  # noqa: E402, F401


def pytest_addoption(parser):
    parser.addoption("--p1-port", default=None,
                     help="hardware-in-loop: a real P1 port (/dev/ttyUSB0 or socket://host:port)")
    parser.addoption("--p1-profile", default="auto", help="hardware-in-loop: the meter's profile")
    parser.addoption("--p1-telegrams", default="10", help="hardware-in-loop: telegrams to read")
    parser.addoption("--p1-replug", action="store_true",
                     help="hardware-in-loop: ask the maintainer to pull and reinsert the cable")
    parser.addoption("--p1-power-off", default=None, help="hardware-in-loop: command that cuts the adapter's power")
    parser.addoption("--p1-power-on", default=None, help="hardware-in-loop: command that restores it")


@pytest.fixture
def pty_pair():
    pair = PtyPair()
    yield pair
    pair.close()


@pytest.fixture
async def start_agent():
    """Start an Agent on a Config; stopped at the end of the test."""
    from agent.service import Agent

    started: list[RunningAgent] = []

    async def start(config: Config, clock=None) -> RunningAgent:
        agent = Agent(config, clock=clock) if clock else Agent(config)
        await agent.start()
        running = RunningAgent(agent)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.http.close()
        await running.agent.stop()


