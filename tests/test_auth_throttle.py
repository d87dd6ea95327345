"""The bad-token throttle (agent/auth.py, `FailureThrottle`) against an attacker with many addresses: flushing the
table with junk addresses does not reset a throttled address's count, an IPv6 /64 counts as one client, and a
valid token is never refused, whatever the table holds. The attack runs on a real agent on 127.0.0.1, its junk
addresses from 127.0.0.0/8 (Linux routes all of it to loopback); the /64 aggregation is a unit test of the
throttle, since loopback has one IPv6 address."""

from __future__ import annotations

import aiohttp
import pytest

from agent.auth import FailureThrottle
from tests.helpers.agent import OPERATOR_TOKEN, make_config

BAD = {"Authorization": "Bearer edge_hh_guess"}
GOOD = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def from_address(running, address: str, headers: dict) -> int:
    """One request to the agent with `address` as its source."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(running.base + "/meters", headers=headers) as resp:
            return resp.status


async def test_junk_addresses_do_not_flush_a_throttled_address(tmp_path, start_agent):
    """The attack: ten guesses from one address, then one bad token from each of `max_clients` junk addresses,
    then ten more guesses, and so on. Before, the junk evicted the guesser's entry (one table, the oldest out) and
    each round gave it ten more guesses: unlimited guessing. Now its count stays until its window ends."""
    running = await start_agent(make_config(tmp_path))
    running.agent.throttle = FailureThrottle(max_clients=20)  # the agent's own class, a table small enough to fill
    guesser = "127.0.0.1"
    answered = []
    for _ in range(3):  # three rounds of guess, then flush
        for _ in range(11):
            answered.append(await from_address(running, guesser, BAD))
        for n in range(20):
            await from_address(running, f"127.0.1.{n + 1 + len(answered)}", BAD)
    assert answered.count(401) == 10, answered  # ten guesses in the window, whatever the junk did
    assert set(answered[10:]) == {429}
    # a valid token from the guesser, and from a new address while the table is full, is never refused
    assert await from_address(running, guesser, GOOD) == 200
    assert await from_address(running, "127.0.2.1", GOOD) == 200


def test_a_full_table_refuses_bad_tokens_from_new_clients_and_never_resets_a_count():
    clock = Clock()
    throttle = FailureThrottle(limit=3, window_s=60, max_clients=4, clock=clock)
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
        assert throttle.retry_after(client) == 0
        throttle.failed(client)
    # full: a new client's bad token waits until the oldest entry's window ends; known clients count on
    assert throttle.retry_after("10.0.0.5") == pytest.approx(60)
    assert throttle.retry_after("10.0.0.1") == 0
    clock.now += 30
    throttle.failed("10.0.0.1")
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == pytest.approx(30)
    assert throttle.retry_after("10.0.0.5") == pytest.approx(30)
    # the oldest window ends: its entry goes, a new client takes its place; 10.0.0.1 (same start) was throttled
    # and its window ended too, so it starts again from nothing, never earlier
    clock.now += 30.5
    assert throttle.retry_after("10.0.0.5") == 0
    throttle.failed("10.0.0.5")
    assert throttle.retry_after("10.0.0.1") == 0


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4():
    throttle = FailureThrottle(limit=3, window_s=60, clock=Clock())
    for host in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2:abcd:1234:5678:9abc"):
        assert throttle.retry_after(host) == 0
        throttle.failed(host)
    assert throttle.retry_after("2001:db8:1:2::77") > 0  # a fourth address of the same /64: throttled
    assert throttle.retry_after("2001:db8:1:3::1") == 0  # the next /64 is another client
    for _ in range(3):
        throttle.failed("::ffff:192.0.2.7")
    assert throttle.retry_after("192.0.2.7") > 0  # the same IPv4 client, however the socket spelled it
    assert throttle.retry_after("192.0.2.8") == 0  # IPv4 counts per address
    assert throttle.retry_after("unknown") == 0  # not an address (a Unix socket): counted as it is


def test_a_global_bound_on_bad_tokens_a_second():
    """The last line: however many clients, at most `global_per_s` bad tokens a second are checked at all."""
    clock = Clock()
    throttle = FailureThrottle(limit=10, window_s=60, max_clients=10_000, global_per_s=5, clock=clock)
    for n in range(5):
        assert throttle.retry_after(f"2001:db8:{n}::1") == 0
        throttle.failed(f"2001:db8:{n}::1")
    assert 0 < throttle.retry_after("2001:db8:99::1") <= 1
    clock.now += 1
    assert throttle.retry_after("2001:db8:99::1") == 0
