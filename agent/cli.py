"""`edge-agent`: run the agent, run the demo, emulate a meter, check a config file."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.config import Config, ConfigError, load_config, parse_config


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def _serve(config: Config, duration: float | None = None, on_started=None, before_stop=None) -> None:
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


def cmd_run(args) -> int:
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


def cmd_check_config(args) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"edge-agent: {err}", file=sys.stderr)
        return 2
    print(f"{args.config}: ok, {len(config.meters)} meter(s): "
          + ", ".join(f"{m.meter_id} on {m.port} ({m.profile})" for m in config.meters))
    return 0


def cmd_emulate_meter(args) -> int:
    from drivers.emulator import run_emulator

    return run_emulator(args)


# --- the demo ------------------------------------------------------------------------------
def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]


def _start_emulator(profile: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "drivers.emulator", "--pty", "--profile", profile, *extra],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise RuntimeError("the meter emulator did not start")
    return proc, line.split()[-1]


def _format_live(reading) -> str:
    def w(value):
        return "   -   " if value is None else f"{value:7.0f}"

    volts = "/".join("-" if v is None else f"{v:.0f}" for v in
                     (reading.voltage_l1_v, reading.voltage_l2_v, reading.voltage_l3_v))
    gas = "-" if reading.gas_m3 is None else f"{reading.gas_m3:.3f} m3"
    return (f"{reading.received_at:%H:%M:%S}  {reading.meter_id}  import {w(reading.power_import_w)} W  "
            f"export {w(reading.power_export_w)} W  tariff {reading.tariff}  V {volts}  gas {gas}")


def cmd_demo(args) -> int:
    _setup_logging("WARNING" if not args.verbose else "INFO")
    workdir = Path(args.data or tempfile.mkdtemp(prefix="edge-demo-"))
    emulator, pty_path = _start_emulator(args.profile, ["--speed", str(args.speed)])
    port = _free_port(args.port)
    token = secrets.token_urlsafe(24)
    config = parse_config({
        "device": {"name": "edge-demo"},
        "api": {"listen": f"127.0.0.1:{port}"},
        "auth": {"operator_token": token},
        "storage": {"path": str(workdir / "store"), "flush_seconds": 2},
        "meters": [{"id": "demo-meter", "port": pty_path, "profile": args.profile, "stall_seconds": 10}],
    }, "demo")
    print(f"Edge demo: emulated {args.profile} meter on {pty_path}, data in {workdir}")
    print(f"API: http://127.0.0.1:{port}/health   (operator token for /meters: {token})")

    async def live(agent, stop):
        last_print = 0.0

        def printer(reading):
            nonlocal last_print
            now = time.monotonic()
            if now - last_print >= 1.0:
                last_print = now
                print(_format_live(reading), flush=True)

        agent.pipeline.subscribe(printer)

    try:
        asyncio.run(_serve(config, duration=args.duration, on_started=live,
                           before_stop=lambda agent: _demo_summary(port, token)))
    finally:
        emulator.terminate()
        try:
            emulator.wait(5)
        except subprocess.TimeoutExpired:
            emulator.kill()
    return 0


async def _demo_summary(port: int, token: str) -> None:
    """Ask the running API what it saw, as an installer would."""
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.get(f"{base}/health") as resp:
            health = await resp.json()
        print(f"GET /health -> {resp.status} {health['status']}")
        for meter_id, m in health["meters"].items():
            print(f"  {meter_id}: {m['state']}, {m['telegrams_ok']} telegrams, {m['crc_errors']} CRC errors, "
                  f"{m['parse_errors']} parse errors, {m['reconnects']} reconnects")
        async with http.get(f"{base}/meters/demo-meter/readings?resolution=raw&limit=100000", headers=auth) as resp:
            rows = await resp.json()
        print(f"GET /meters/demo-meter/readings -> {resp.status}, {rows.get('count')} readings kept")


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
    demo.add_argument("--data", help="data directory (default: a new temporary one)")
    demo.add_argument("-v", "--verbose", action="store_true")
    demo.set_defaults(func=cmd_demo)

    emulate = sub.add_parser("emulate-meter", help="write realistic P1 telegrams to a pty, TCP port or stdout")
    from drivers.emulator import add_emulator_arguments

    add_emulator_arguments(emulate)
    emulate.set_defaults(func=cmd_emulate_meter)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
