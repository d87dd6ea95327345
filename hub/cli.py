"""`edge-hub`: the fleet's hub and the operator's tooling.

  edge-hub keygen --out operator.key                  a new Ed25519 key pair (the public one goes in edge.toml)
  edge-hub init --servers nats://...                  the streams and buckets
  edge-hub serve --servers ... --operator-public-key KEY --listen 127.0.0.1:8090 [--min-devices 2]
  edge-hub register-org --name N --level dso --area A [--area B]     prints the organization's one API key
  edge-hub revoke-key --org ORG_ID
  edge-hub device-key --out D.nk                      a device's NATS nkey: the seed file for its [fleet]
                                                      nkey_seed_file; prints the public key for assign-device
  edge-hub assign-device --device D --area A [--nkey U...]
  edge-hub set-levels --file levels.toml              [levels.NAME] tables for every device, whole
  edge-hub relate --device D --household HH_ID --org ORG_ID [--org ...]   (no --org: no longer related)
  edge-hub devices                                    applied version, last release, health per device
  edge-hub nats-auth --hub-nkey U... [--servers ...] --operator-public-key KEY --out auth.conf
                                                      the servers' authorization: the hub, each device's nkey with
                                                      only its own subjects (no --servers: the hub's user alone)
The operator commands take --servers and --key (the private key file); serve takes the operator token for
GET /devices from EDGE_HUB_OPERATOR_TOKEN. Every command that connects takes --nkey-seed (the hub's or the
operator's seed file) when the servers require nkeys.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from agent.fleet import document


def _servers(args) -> list[str]:
    return [s for item in args.servers for s in item.split(",") if s]


async def _connect(args):
    import nats

    nc = await nats.connect(servers=_servers(args), connect_timeout=3, max_reconnect_attempts=10,
                            nkeys_seed=args.nkey_seed)
    return nc, nc.jetstream(timeout=10)


def cmd_keygen(args) -> int:
    key = document.new_private_key()
    _secret_file(args.out, document.private_key_text(key))
    print(document.public_key_text(key))
    return 0


async def _init(args) -> int:
    from hub.setup import ensure

    nc, js = await _connect(args)
    try:
        await ensure(js, args.replicas, args.keep_days)
    finally:
        await nc.close()
    print("streams and buckets ready")
    return 0


async def _operator(args, action) -> int:
    from hub.operator import Operator, dumps
    from hub.setup import ensure

    key = document.private_key_from_text(Path(args.key).read_text())
    nc, js = await _connect(args)
    try:
        await ensure(js, args.replicas, args.keep_days)
        result = await action(Operator(js, key, args.valid_days))
    finally:
        await nc.close()
    print(dumps(result))
    return 0


async def _devices(args) -> int:
    from hub.operator import dumps
    from hub.service import Hub

    hub = Hub(_servers(args), args.operator_public_key, replicas=args.replicas, nkey_seed=args.nkey_seed)
    await hub.open()  # read only: no consumer
    try:
        print(dumps(await hub.devices()))
    finally:
        await hub.stop()
    return 0


async def _serve(args) -> int:
    from aiohttp import web

    from hub.api import create_app
    from hub.push import Pusher
    from hub.service import Hub

    hub = Hub(_servers(args), args.operator_public_key, min_devices=args.min_devices, replicas=args.replicas,
              operator_token=os.environ.get("EDGE_HUB_OPERATOR_TOKEN"), name=args.name, keep_days=args.keep_days,
              nkey_seed=args.nkey_seed)
    await hub.start()
    pusher = Pusher(hub, grace_s=args.push_grace, allow_private=args.allow_private_endpoints)
    await pusher.start()
    audit = Path(args.data) / "audit.jsonl" if args.data else None
    if audit:
        audit.parent.mkdir(parents=True, exist_ok=True)
    app = create_app(hub, audit, allow_http=args.allow_http, allow_private=args.allow_private_endpoints)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = args.listen.rpartition(":")
    await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    logging.getLogger("edge.hub").info("edge-hub on http://%s", args.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await pusher.stop()
    await hub.stop()
    return 0


def _secret_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def cmd_device_key(args) -> int:
    from hub.operator import new_nkey

    seed, public = new_nkey()
    _secret_file(args.out, seed)
    print(public)
    return 0


async def _nats_auth(args) -> int:
    from hub.operator import authorization
    from hub.service import Hub

    fleet = None
    if _servers(args):  # else the bootstrap: the hub's user alone, so that it can connect and publish
        if not args.operator_public_key:
            raise ValueError("--operator-public-key is needed to verify the fleet document")
        hub = Hub(_servers(args), args.operator_public_key, replicas=args.replicas, nkey_seed=args.nkey_seed)
        await hub.open()
        try:
            fleet = hub.fleet
        finally:
            await hub.stop()
    text = authorization(fleet, args.hub_nkey)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


def _levels_file(path: str) -> dict:
    import tomllib

    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    if set(data) != {"levels"}:
        raise ValueError(f"{path}: only [levels.NAME] tables")
    return data["levels"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-hub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_cluster(p, required=True):
        p.add_argument("--servers", action="append", required=required, default=[],
                       help="NATS URLs (repeat or comma-separate)")
        p.add_argument("--nkey-seed", help="this tool's NATS nkey seed file, when the servers require nkeys")
        p.add_argument("--replicas", type=int, default=3, help="replicas of the streams and buckets (default 3)")
        p.add_argument("--keep-days", type=float, default=35, help="area windows kept in the hub's bucket, when "
                                                                     "it is created (default 35)")
        return p

    def with_key(p):
        with_cluster(p)
        p.add_argument("--key", required=True, help="the operator's private key file (edge-hub keygen)")
        p.add_argument("--valid-days", type=float, default=30, help="the documents' not-after, days from now")
        return p

    p = sub.add_parser("keygen", help="a new operator key pair")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_keygen)
    with_cluster(sub.add_parser("init", help="create the streams and buckets")).set_defaults(
        func=lambda a: asyncio.run(_init(a)))

    p = with_cluster(sub.add_parser("serve", help="run the hub"))
    p.add_argument("--operator-public-key", required=True)
    p.add_argument("--listen", default="127.0.0.1:8090")
    p.add_argument("--min-devices", type=int, default=2, help="devices that must release a window (default 2)")
    p.add_argument("--data", help="directory for the audit log")
    p.add_argument("--name", default="edge-hub")
    p.add_argument("--push-grace", type=float, default=60.0,
                   help="seconds after a window's end before it is pushed even if a device has not reported")
    p.add_argument("--allow-http", action="store_true", help="webhook endpoints may be plain http://")
    p.add_argument("--allow-private-endpoints", action="store_true",
                   help="webhook endpoints may be private, loopback or link-local addresses")
    p.set_defaults(func=lambda a: asyncio.run(_serve(a)))

    p = with_key(sub.add_parser("register-org", help="an organization for some areas: its one key"))
    p.add_argument("--name", required=True)
    p.add_argument("--level", required=True)
    p.add_argument("--area", action="append", required=True)

    async def register(op, a=None):
        org, key = await op.register_org(a.name, a.level, a.area)
        return {"organization": org, "api_key": key}
    p.set_defaults(func=lambda a: asyncio.run(_operator(a, lambda op: register(op, a))))

    p = with_key(sub.add_parser("revoke-key", help="revoke an organization's key everywhere"))
    p.add_argument("--org", required=True)
    p.set_defaults(func=lambda a: asyncio.run(_operator(a, lambda op: op.revoke_org_key(a.org))))

    p = with_key(sub.add_parser("assign-device", help="put a device in an area"))
    p.add_argument("--device", required=True)
    p.add_argument("--area", required=True)
    p.add_argument("--nkey", help="the device's public NATS nkey (edge-hub device-key): its permissions too")
    p.set_defaults(func=lambda a: asyncio.run(_operator(a, lambda op: op.assign_device(a.device, a.area, a.nkey))))

    p = sub.add_parser("device-key", help="a device's NATS nkey seed file; prints its public key")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_device_key)

    p = with_key(sub.add_parser("set-levels", help="level definitions for every device"))
    p.add_argument("--file", required=True, help="a TOML file of [levels.NAME] tables, as in edge.toml")
    p.set_defaults(func=lambda a: asyncio.run(_operator(a, lambda op: op.set_levels(_levels_file(a.file)))))

    p = with_cluster(sub.add_parser("nats-auth", help="the servers' authorization block"), required=False)
    p.add_argument("--operator-public-key", help="verifies the fleet document (with --servers)")
    p.add_argument("--hub-nkey", required=True, help="the public nkey of the hub and the operator's tools")
    p.add_argument("--out", help="file to write (default: standard output)")
    p.set_defaults(func=lambda a: asyncio.run(_nats_auth(a)))

    p = with_key(sub.add_parser("relate", help="mark a household of a device related to organizations"))
    p.add_argument("--device", required=True)
    p.add_argument("--household", required=True)
    p.add_argument("--org", action="append", default=[])
    p.set_defaults(func=lambda a: asyncio.run(_operator(a, lambda op: op.relate(a.device, a.household, a.org))))

    p = with_cluster(sub.add_parser("devices", help="list devices"))
    p.add_argument("--operator-public-key", required=True)
    p.set_defaults(func=lambda a: asyncio.run(_devices(a)))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError) as err:
        print(f"edge-hub: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
