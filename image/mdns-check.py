#!/usr/bin/env python3
"""mDNS on the wire, for test-boot.sh: is the booted image found as <name>.local with its API on the LAN?

QEMU's user network carries no multicast, so the VM gets a second network card (`-netdev socket,connect=`) whose
Ethernet frames come here over TCP (each frame after its length, 4 bytes big-endian). This script is the rest of
that LAN: it listens to what avahi sends to 224.0.0.251 / ff02::fb port 5353, asks for <name>.local and the
_http._tcp services every few seconds (multicast queries, as a laptop's resolver does), and passes once answers
carry an address record for <name>.local and an SRV record of the Edge API service on <name>.local with the port.

    mdns-check.py PORT NAME API_PORT TIMEOUT     # prints "MDNS-OK ..." and exits 0, or explains and exits 1
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import time

MDNS_PORT = 5353
OUR_MAC = bytes.fromhex("525400000099")
OUR_IP6 = socket.inet_pton(socket.AF_INET6, "fe80::5054:ff:fe00:99")
MDNS_IP6 = socket.inet_pton(socket.AF_INET6, "ff02::fb")
MDNS_MAC6 = bytes.fromhex("3333000000fb")
TYPE_A, TYPE_PTR, TYPE_AAAA, TYPE_SRV, TYPE_ANY = 1, 12, 28, 33, 255


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".")) + b"\0"


def query_frame(questions: list[tuple[str, int]]) -> bytes:
    """An Ethernet frame with an IPv6 UDP multicast mDNS query (QM) for the questions."""
    dns = struct.pack("!6H", 0, 0, len(questions), 0, 0, 0)
    dns += b"".join(encode_name(name) + struct.pack("!2H", qtype, 1) for name, qtype in questions)
    udp_len = 8 + len(dns)
    pseudo = OUR_IP6 + MDNS_IP6 + struct.pack("!I3xB", udp_len, 17)
    udp = struct.pack("!4H", MDNS_PORT, MDNS_PORT, udp_len, 0) + dns
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    ip6 = struct.pack("!IHBB", 6 << 28, udp_len, 17, 255) + OUR_IP6 + MDNS_IP6
    return MDNS_MAC6 + OUR_MAC + b"\x86\xdd" + ip6 + udp


def read_name(msg: bytes, pos: int) -> tuple[str, int]:
    labels, end, hops = [], None, 0
    while True:
        length = msg[pos]
        if length & 0xC0 == 0xC0:  # compression pointer
            if end is None:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            hops += 1
            if hops > 64:
                raise ValueError("name pointer loop")
            continue
        pos += 1
        if length == 0:
            return ".".join(labels), (end if end is not None else pos)
        labels.append(msg[pos:pos + length].decode("utf-8", "replace"))
        pos += length


def records(msg: bytes) -> list[tuple[str, int, int, bytes]]:
    """(name, type, where its data starts, the data) of every answer/authority/additional record of a response."""
    _, flags, qd, an, ns, ar = struct.unpack("!6H", msg[:12])
    if not flags & 0x8000:
        return []
    pos = 12
    for _ in range(qd):
        _, pos = read_name(msg, pos)
        pos += 4
    out = []
    for _ in range(an + ns + ar):
        name, pos = read_name(msg, pos)
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[pos:pos + 10])
        pos += 10
        out.append((name.lower(), rtype, pos, msg[pos:pos + rdlen]))
        pos += rdlen
    return out


def mdns_payload(frame: bytes) -> bytes | None:
    """The UDP payload of an IPv4 or IPv6 packet to port 5353 in an Ethernet frame, else None."""
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == 0x86DD and frame[20] == 17:
        udp = frame[54:]
    elif ethertype == 0x0800 and frame[23] == 17:
        udp = frame[14 + (frame[14] & 0x0F) * 4:]
    else:
        return None
    return udp[8:] if len(udp) >= 8 and struct.unpack("!H", udp[2:4])[0] == MDNS_PORT else None


def main() -> int:
    port, name, api_port, timeout = int(sys.argv[1]), sys.argv[2].lower(), int(sys.argv[3]), float(sys.argv[4])
    host = f"{name}.local"
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(timeout)
    print("mdns-check: listening", flush=True)
    conn, _ = server.accept()  # QEMU connects when it starts
    deadline = time.time() + timeout
    buf, addresses, services, next_query = b"", {}, {}, 0.0
    while time.time() < deadline:
        if time.time() >= next_query:
            frame = query_frame([(host, TYPE_ANY), ("_http._tcp.local", TYPE_PTR)])
            conn.sendall(struct.pack("!I", len(frame)) + frame)
            next_query = time.time() + 5
        ready, _, _ = select.select([conn], [], [], 1)
        if not ready:
            continue
        chunk = conn.recv(65536)
        if not chunk:
            print("mdns-check: QEMU closed the network socket")
            return 1
        buf += chunk
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack("!I", buf[:4])[0]:
            length = struct.unpack("!I", buf[:4])[0]
            frame, buf = buf[4:4 + length], buf[4 + length:]
            payload = mdns_payload(frame)
            if payload is None:
                continue
            try:
                found = records(payload)
            except (ValueError, IndexError, struct.error):
                continue
            for rname, rtype, at, rdata in found:
                if rname == host and rtype == TYPE_A and len(rdata) == 4:
                    addresses[socket.inet_ntop(socket.AF_INET, rdata)] = "A"
                elif rname == host and rtype == TYPE_AAAA and len(rdata) == 16:
                    addresses[socket.inet_ntop(socket.AF_INET6, rdata)] = "AAAA"
                elif rtype == TYPE_SRV and rname.endswith("._http._tcp.local"):
                    srv_port = struct.unpack("!H", rdata[4:6])[0]
                    target, _ = read_name(payload, at + 6)
                    services[rname] = (target.lower(), srv_port)
        api = [s for s, (target, p) in services.items() if target == host and p == api_port]
        if addresses and api:
            print(f"MDNS-OK {host} -> {', '.join(sorted(addresses))}; service {api[0]!r} -> {host}:{api_port}")
            return 0
    print(f"mdns-check: no answer for {host} with the API on port {api_port} within {timeout:.0f}s; "
          f"seen addresses {addresses or 'none'}, services {services or 'none'}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
