"""`edge-agent`: run the agent, run the demo, emulate a meter, check a config file, pair a HomeWizard P1 meter."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from agent.config import Config, ConfigError, load_config

if TYPE_CHECKING:  # imported when serving only (the other commands never load the agent)
    from agent.service import Agent


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def _serve(config: Config, duration: float | None = None,
                 on_started: Callable[[Agent, asyncio.Event], Awaitable[None]] | None = None,
                 before_stop: Callable[[Agent], Awaitable[None]] | None = None) -> None:
    from agent.service import Agent

    agent = Agent(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    try:
        if on_started:
            await on_started(agent, stop)
        if duration:
            await asyncio.wait_for(stop.wait(), duration)
        else:
            await stop.wait()
    except asyncio.TimeoutError:
        pass
    finally:
        if before_stop:
            await before_stop(agent)
        await agent.stop()


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return 2
    _setup_logging(config.log_level)
    try:
        asyncio.run(_serve(config))
    except OSError as err:  # e.g. the API port is taken
        print(f"edge-agent: cannot start: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return 2
    print(f"{args.config}: ok, {len(config.meters)} meter(s): "
          + ", ".join(f"{m.meter_id} on {m.port} ({m.profile})" for m in config.meters))
    return 0


def cmd_emulate_meter(args: argparse.Namespace) -> int:
    from drivers.emulator import run_emulator

    return run_emulator(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    _setup_logging("WARNING" if not args.verbose else "INFO")
    asyncio.run(run_demo(args, _serve))
    return 0


def cmd_homewizard_pair(args: argparse.Namespace) -> int:
    from drivers.homewizard import base_url
    from drivers.homewizard_https import pair

    try:
        base = base_url(args.url)
        if not base.startswith("https://"):
            raise ValueError("API v2 is https://<host> (API v1, http://, needs no pairing)")
        token, pin = pair(base, args.name, args.wait)
    except (ValueError, OSError) as err:
        print(f"edge-agent: homewizard-pair: {err}", file=sys.stderr)
        return 1
    print(f"paired; in the meter's [[meters]] table of edge.toml:\nport = \"{base}\"\ntoken = \"{token}\"\n"
          f"certificate_sha256 = \"{pin}\"")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent with a config file")
    run.add_argument("--config", required=True, help="path to edge.toml")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", help="path to edge.toml")
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser("demo", help="run Edge on an emulated meter, printing live readings")
    demo.add_argument("--duration", type=float, default=None, help="stop after N seconds (default: Ctrl-C)")
    demo.add_argument("--profile", default="dsmr5", help="the emulated meter's profile")
    demo.add_argument("--speed", type=float, default=1.0, help="emulated time runs N times faster")
    demo.add_argument("--port", type=int, default=8080, help="API port (a free one if taken)")
    demo.add_argument("--households", type=int, default=20, help="simulated households posting over HTTP")
    demo.add_argument("--data", help="data directory (default: a new temporary one)")
    demo.add_argument("-v", "--verbose", action="store_true")
    demo.set_defaults(func=cmd_demo)

    hw = sub.add_parser("homewizard-pair", help="get a HomeWizard P1 meter's API v2 token (press its button) and "
                                                 "pin its certificate")
    hw.add_argument("url", help="https://<the P1 meter's address>")
    hw.add_argument("--name", default="local/edge", help="the user name the device keeps for this token")
    hw.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the button")
    hw.set_defaults(func=cmd_homewizard_pair)

    emulate = sub.add_parser("emulate-meter", help="write realistic P1 telegrams to a pty, TCP port or stdout")
    from drivers.emulator import add_emulator_arguments

    add_emulator_arguments(emulate)
    emulate.set_defaults(func=cmd_emulate_meter)

    from agent.query import add_arguments as add_query_arguments, cmd_query

    query = sub.add_parser("query", help="ask several Edge devices the same aggregate-by-tag question and "
                                         "combine the answers (mean and the tariff example)")
    add_query_arguments(query)
    query.set_defaults(func=cmd_query)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
