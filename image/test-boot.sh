#!/usr/bin/env bash
# Boot test of the built image: boots a copy of it in QEMU (arm64 virt machine, TCG) with an emulated DSMR 5 meter
# on a USB serial port, exactly as an installer would set it up: an edge.toml written onto the FAT boot partition.
# Passes when /health (port-forwarded to the host) shows telegrams read from that port and the configured device
# name; also checks the operator token from edge.toml works and was moved off the boot partition, the hostname was
# applied, the data partition grown, the root filesystem read-only (byte for byte unchanged by two boots) and no
# unit failed, the trigger sandbox's seccomp filter enforced on arm64, and that what Raspberry Pi Imager's "OS
# customisation" adds (a firstrun.sh run through cmdline.txt, written for Raspberry Pi OS) is ignored and removed.
# Then boots it again with a bad edge.toml (unknown profile, another name): the last good config must stay in force
# and the error show on the console and in /health (503); and a third time with the agent's
# wheel in edge-update/ on the boot partition: it must be installed; and a fourth time with the data partition wiped:
# it must be made anew and the device come back with edge.toml applied again (EDGE_BOOT_ONCE=1 skips these three).
# Prints the boot-to-healthy times.
#
#   image/test-boot.sh [IMAGE]     # default image/out/edge-<version>-arm64.img.xz (or .img)
#
# Environment: EDGE_BOOT_TIMEOUT (seconds, default 420), EDGE_PYTHON (python with this repo installed; default
# .venv/bin/python, made with `make install` if missing), EDGE_KEEP=1 keeps the work folder.
set -euo pipefail

IMAGE_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$IMAGE_DIR/.." && pwd)
. "$IMAGE_DIR/qemu-common.sh"
OUT=${EDGE_OUT:-$IMAGE_DIR/out}
TIMEOUT=${EDGE_BOOT_TIMEOUT:-420}
PY=${EDGE_PYTHON:-$REPO/.venv/bin/python}
DEVICE_NAME=edge-boot-test
TOKEN=boot-test-token-$RANDOM$RANDOM$RANDOM
METER=meter-1

log() { printf '%s [%4ds] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*"; }
die() { echo "test-boot.sh: FAIL: $*" >&2; exit 1; }

need=()
command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
command -v mcopy >/dev/null || need+=(mtools)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v xz >/dev/null || need+=(xz-utils)
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${need[*]}: install them (apt-get install ${need[*]})"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi
[ -x "$PY" ] || make -C "$REPO" install >/dev/null
VERSION=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$REPO/pyproject.toml")
SOURCE=${1:-$OUT/edge-$VERSION-arm64.img.xz}
[ -f "$SOURCE" ] || SOURCE=${SOURCE%.xz}
[ -f "$SOURCE" ] || die "no image: build it with image/build.sh"

WORK=$(mktemp -d "$OUT/boot-test.XXXXXX")
QEMU_PID="" EMU_PID="" MDNS_PID=""
cleanup() {
    [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null && wait "$QEMU_PID" 2>/dev/null
    [ -n "$EMU_PID" ] && kill "$EMU_PID" 2>/dev/null && wait "$EMU_PID" 2>/dev/null
    [ -n "$MDNS_PID" ] && kill "$MDNS_PID" 2>/dev/null && wait "$MDNS_PID" 2>/dev/null
    if [ "${EDGE_KEEP:-0}" = 1 ] || [ "${PASSED:-0}" != 1 ]; then
        echo "test-boot.sh: console log and files kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    return 0
}
trap cleanup EXIT

# --- a copy of the image, 2 GiB bigger (the first boot grows the data partition into it) -----------------------
log "image: $SOURCE"
DISK=$WORK/disk.img
copy_image "$SOURCE" "$DISK"
IMAGE_BYTES=$(stat -c %s "$DISK")
truncate -s +2G "$DISK"
read_partitions "$DISK"
root_hash() { dd if="$DISK" bs=512 skip="$ROOT_START" count="$ROOT_SECTORS" status=none | sha256sum | cut -c1-16; }
# Units that failed, from systemd's "[FAILED] Failed to start/mount ..." and "[DEPEND] Dependency failed" lines.
failed_units() {
    tr -d '\r' < "$1" | grep -E -o '(FAILED|DEPEND).*(Failed to (start|mount)|Dependency failed).*' \
        | sed 's/\x1b\[[0-9;]*m//g' || true
}

# --- the kernel and initrd from the image's own boot partition ---------------------------------------------------
kernel_and_initrd || die "the boot partition has no kernel to boot"
mcopy -i "$BOOT" ::/cmdline.txt "$WORK/cmdline.orig.txt"
# What Raspberry Pi Imager's "OS customisation" does to a card: a firstrun.sh and settings in cmdline.txt that run it
# instead of a normal boot. The image must ignore both and boot normally.
printf '%s systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n' \
    "$(tr -d '\r\n' < "$WORK/cmdline.orig.txt")" > "$WORK/cmdline.txt"
printf '#!/bin/sh\necho IMAGER-FIRSTRUN-RAN > /dev/console\n' > "$WORK/firstrun.sh"
mcopy -o -i "$BOOT" "$WORK/cmdline.txt" ::/cmdline.txt
mcopy -o -i "$BOOT" "$WORK/firstrun.sh" ::/firstrun.sh
APPEND=$(qemu_append "$WORK/cmdline.txt")
log "kernel $KERNEL, initrd $INITRD; cmdline: $APPEND"

# --- the installer's step 2: edge.toml on the boot partition --------------------------------------------------
cat > "$WORK/edge.toml" <<EOF
[device]
name = "$DEVICE_NAME"

[api]
listen = "0.0.0.0:8080"

[auth]
operator_token = "$TOKEN"

[[meters]]
id = "$METER"
port = "/dev/ttyUSB0"
profile = "dsmr5"

[network]
ethernet = "dhcp"
EOF
mcopy -o -i "$BOOT" "$WORK/edge.toml" ::/edge.toml

# --- the meter: the emulator as a TCP server, the VM's USB serial port connects to it ------------------------------
(cd "$REPO" && exec "$PY" -m drivers.emulator --tcp 0 --profile dsmr5) > "$WORK/emulator.out" 2> "$WORK/emulator.err" &
EMU_PID=$!
for _ in $(seq 50); do [ -s "$WORK/emulator.out" ] && break; sleep 0.1; done
METER_URL=$(head -1 "$WORK/emulator.out")
METER_PORT=${METER_URL##*:}
[[ "$METER_PORT" =~ ^[0-9]+$ ]] || die "the meter emulator did not start: $(cat "$WORK/emulator.err")"
HOSTPORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "meter emulator on $METER_URL; API forwarded to 127.0.0.1:$HOSTPORT"

# --- boot and wait ----------------------------------------------------------------------------------------
boot() {  # boot <console log> [qemu options...]: starts the VM in the background
    local console=$1
    shift
    START=$(date +%s.%N)
    nice -n 10 qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 \
        -display none -monitor none -serial "file:$console" \
        -kernel "$WORK/kernel" -initrd "$WORK/initrd" -append "$APPEND" \
        -drive "file=$DISK,format=raw,if=none,id=d" -device virtio-blk-pci,drive=d \
        -netdev "user,id=n,hostfwd=tcp:127.0.0.1:$HOSTPORT-:8080" -device virtio-net-pci,netdev=n,romfile= \
        -device virtio-rng-pci \
        -device qemu-xhci -chardev "socket,id=p1,host=127.0.0.1,port=$METER_PORT" -device usb-serial,chardev=p1 \
        "$@" >> "$WORK/qemu.log" 2>&1 &
    QEMU_PID=$!
    log "qemu started (pid $QEMU_PID); waiting up to ${TIMEOUT}s for /health with telegrams from /dev/ttyUSB0"
}

stop() {  # no shutdown needed: edge-firstboot fsyncs and syncs what it writes, so the disk file has it
    kill "$QEMU_PID"; wait "$QEMU_PID" 2>/dev/null || true; QEMU_PID=""
}

# wait_healthy NAME CONSOLE [ERROR]: until /health shows device NAME and the meter reading, with 200; or, given ERROR,
# with 503 and a config_error that contains ERROR (a bad edge.toml). Sets HEALTHY (seconds). /health's detail is the
# operator's: read with the token from edge.toml, or (HEALTH_TOKEN=-: it was lost with the data partition) with the
# one edge-firstboot generated and printed on CONSOLE. Without a token /health must say only ok or degraded.
wait_healthy() {
    local rc=0
    "$PY" - "$HOSTPORT" "$1" "$METER" "${HEALTH_TOKEN:-$TOKEN}" "$TIMEOUT" "$START" "$QEMU_PID" "${3:-}" "$2" \
        > "$WORK/health.out" <<'PYEOF' || rc=$?
import json, os, re, sys, time, urllib.error, urllib.request
port, name, meter, token, timeout, start, qemu = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], \
    float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
config_error, console = sys.argv[8], sys.argv[9]
url = f"http://127.0.0.1:{port}"
last = "no answer yet"


def get_health(bearer):
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/health", headers=headers), timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def generated_token():
    try:
        text = open(console, encoding="latin-1").read().replace("\r", "")
    except OSError:
        return None
    found = re.findall(r"generated operator token \(also in /etc/edge/operator-token\): (\S+)", text)
    return found[-1] if found else None


token_source = "edge.toml" if token != "-" else "the console (generated)"
while time.time() - start < timeout:
    try:
        os.kill(qemu, 0)
    except OSError:
        print(f"qemu exited; last /health: {last}")
        sys.exit(1)
    bearer = token if token != "-" else generated_token()
    if bearer is None:
        last = "no generated operator token on the console yet"
        time.sleep(1)
        continue
    try:
        status, body = get_health(bearer)
    except (OSError, ValueError) as err:
        last = f"{type(err).__name__}: {err}"
        time.sleep(1)
        continue
    last = f"{status} {json.dumps(body)[:400]}"
    m = body.get("meters", {}).get(meter, {})
    expected = (status == 503 and config_error in (body.get("config_error") or "")) if config_error else \
        (status == 200 and not body.get("config_error"))
    if expected and body.get("device") == name and m.get("telegrams_ok", 0) > 0 and m.get("state") == "reading":
        healthy = time.time() - start
        req = urllib.request.Request(url + "/meters", headers={"Authorization": f"Bearer {bearer}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            meters_status = resp.status
        public_status, public = get_health(None)  # anyone on the network: ok or degraded, nothing else
        if set(public) != {"status"} or public["status"] not in ("ok", "degraded"):
            print(f"/health without a token says more than ok or degraded: {public_status} {public}")
            sys.exit(1)
        # The trigger sandbox on arm64: the agent's start-up probe runs a condition in a seccomp-locked worker and
        # checks that a forbidden system call kills one (the allow-list names aarch64's system calls right).
        sandbox = body.get("triggers", {})
        while sandbox.get("sandbox") != "enforced" and time.time() - start < timeout:
            time.sleep(2)
            try:
                sandbox = get_health(bearer)[1].get("triggers", {})
            except (OSError, ValueError):
                pass
        if sandbox.get("sandbox") != "enforced":
            print(f"the trigger sandbox is not enforced: {sandbox}")
            sys.exit(1)
        print(f"HEALTHY {healthy:.1f}")
        print(f"    /health {status}: device={body['device']!r}, meter {meter}: state={m['state']}, "
              f"telegrams_ok={m['telegrams_ok']}, crc_errors={m.get('crc_errors')}")
        print(f"    GET /meters with the operator token from {token_source}: {meters_status}")
        print(f"    GET /health without a token: {public_status} {json.dumps(public)}")
        print(f"    trigger sandbox: {sandbox.get('sandbox')} ({sandbox.get('detail')})")
        if config_error:
            print(f"    config_error in /health: {body['config_error'].splitlines()[1].strip()}")
        sys.exit(0)
    time.sleep(1)
print(f"timeout after {timeout:.0f}s; last /health: {last}")
sys.exit(1)
PYEOF
    grep -v '^HEALTHY' "$WORK/health.out" || true
    if [ "$rc" != 0 ]; then
        echo "--- console (last 40 lines) ---"; tail -40 "$2" | tr -d '\r'
        die "/health never showed telegrams from /dev/ttyUSB0 with device name $1"
    fi
    HEALTHY=$(sed -n 's/^HEALTHY //p' "$WORK/health.out")
}

# --- first boot: the installer's edge.toml ---------------------------------------------------------------------
ROOT_HASH=$(root_hash)
# A second network card on a "LAN" that is mdns-check.py (QEMU's user network carries no multicast): it must find
# <name>.local and the API's service there, as an installer's laptop would.
MDNS_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY" "$IMAGE_DIR/mdns-check.py" "$MDNS_PORT" "$DEVICE_NAME" 8080 "$TIMEOUT" > "$WORK/mdns.out" 2>&1 &
MDNS_PID=$!
for _ in $(seq 50); do grep -q listening "$WORK/mdns.out" && break; sleep 0.1; done
boot "$WORK/console.log" -netdev "socket,id=lan,connect=127.0.0.1:$MDNS_PORT" \
    -device virtio-net-pci,netdev=lan,mac=52:54:00:12:34:99,romfile=
wait_healthy "$DEVICE_NAME" "$WORK/console.log"
FIRST=$HEALTHY
MDNS_RC=0
wait "$MDNS_PID" || MDNS_RC=$?
grep -v listening "$WORK/mdns.out" | sed 's/^/    /'
MDNS_PID=""
[ "$MDNS_RC" = 0 ] || die "$DEVICE_NAME.local was not found by mDNS on the VM's LAN"
# The login prompt on the console shows the hostname edge-firstboot set from [device] name.
for _ in $(seq 60); do grep -q "$DEVICE_NAME login:" "$WORK/console.log" && break; sleep 1; done
stop
tr -d '\r' < "$WORK/console.log" | grep -E "edge-firstboot: |login:" | sed 's/^/    console: /' || true
grep -q "$DEVICE_NAME login:" "$WORK/console.log" || die "no '$DEVICE_NAME login:' prompt: hostname not applied"
grep -q "data partition /data grown" "$WORK/console.log" || die "the data partition was not grown on the first boot"
grep -q "root filesystem read-only" "$WORK/console.log" || die "the root filesystem is not read-only"
FAILED=$(failed_units "$WORK/console.log")
[ -z "$FAILED" ] || die "units failed on the first boot: $FAILED"
if grep -q "unexpected error" "$WORK/console.log"; then die "edge-firstboot failed (see the console log)"; fi
SYSTEMD_AT=$(tr -d '\r' < "$WORK/console.log" | grep -m1 -o '^\[ *[0-9.]*\] systemd\[1\]: systemd [^ ]* running in system mode' \
    | sed 's/^\[ *\([0-9.]*\)\].*/\1/' || true)
# The token is off the FAT partition now.
mcopy -o -i "$BOOT" ::/edge.toml "$WORK/edge.toml.after"
if grep -q "$TOKEN" "$WORK/edge.toml.after"; then die "the operator token is still on the boot partition"; fi
grep -q 'operator_token = "moved-to-device"' "$WORK/edge.toml.after" || die "no note where the token was"
echo "    boot partition after the boot: $(grep operator_token "$WORK/edge.toml.after")"
if grep -q IMAGER-FIRSTRUN-RAN "$WORK/console.log"; then die "Raspberry Pi Imager's firstrun.sh ran"; fi
if mdir -i "$BOOT" ::/firstrun.sh >/dev/null 2>&1; then die "firstrun.sh is still on the boot partition"; fi
mcopy -o -i "$BOOT" ::/cmdline.txt "$WORK/cmdline.after"
if grep -q "systemd.run" "$WORK/cmdline.after"; then die "Imager's settings are still in cmdline.txt"; fi
echo "    cmdline.txt after the boot (Imager's first-run settings removed): $(tr -d '\r' < "$WORK/cmdline.after")"

# --- second boot: a bad edge.toml keeps the last good configuration ---------------------------------------------
SECOND=""
if [ "${EDGE_BOOT_ONCE:-0}" != 1 ]; then
    sed -e 's/"dsmr5"/"dsmr9"/' -e "s/\"$DEVICE_NAME\"/\"not-applied\"/" "$WORK/edge.toml.after" > "$WORK/edge-bad.toml"
    mcopy -o -i "$BOOT" "$WORK/edge-bad.toml" ::/edge.toml
    log "second boot with a bad edge.toml (profile dsmr9, another name): the last good config must stay in force"
    boot "$WORK/console2.log"
    wait_healthy "$DEVICE_NAME" "$WORK/console2.log" "unknown profile 'dsmr9'"
    SECOND=$HEALTHY
    for _ in $(seq 30); do grep -q "login:" "$WORK/console2.log" && break; sleep 1; done
    stop
    tr -d '\r' < "$WORK/console2.log" | grep -E "edge-firstboot: " | sed 's/^/    console: /' || true
    grep -q "unknown profile 'dsmr9'" "$WORK/console2.log" || die "the config error is not on the console"
    if grep -q "data partition /data grown" "$WORK/console2.log"; then die "the data partition was grown again"; fi
    FAILED=$(failed_units "$WORK/console2.log")
    [ -z "$FAILED" ] || die "units failed on the second boot: $FAILED"
    [ "$(root_hash)" = "$ROOT_HASH" ] || die "two boots changed the root partition (it must stay read-only)"
    echo "    root partition byte for byte as built after two boots (sha256 $ROOT_HASH...)"
fi

# --- third boot: an agent update left on the boot partition (what an installer without a shell does) -----------
THIRD=""
if [ "${EDGE_BOOT_ONCE:-0}" != 1 ]; then
    WHEEL=$(ls "$OUT"/wheels/edge_agent-*.whl 2>/dev/null | head -1)
    if [ -z "$WHEEL" ]; then
        (cd "$REPO" && "$PY" -m pip wheel -q --no-deps -w "$WORK" .) && WHEEL=$(ls "$WORK"/edge_agent-*.whl | head -1)
    fi
    mcopy -o -i "$BOOT" "$WORK/edge.toml.after" ::/edge.toml   # the installer fixes edge.toml: the error must go
    mmd -i "$BOOT" ::/edge-update
    mcopy -i "$BOOT" "$WHEEL" "::/edge-update/$(basename "$WHEEL")"
    log "third boot with $(basename "$WHEEL") in edge-update/ on the boot partition and edge.toml fixed"
    boot "$WORK/console3.log"
    wait_healthy "$DEVICE_NAME" "$WORK/console3.log"
    THIRD=$HEALTHY
    stop
    tr -d '\r' < "$WORK/console3.log" | grep -E "edge-firstboot: .*(updat|agent )" | sed 's/^/    console: /' || true
    grep -q "edge-update-agent: agent .* -> " "$WORK/console3.log" || die "the agent update did not run"
    mdir -b -i "$BOOT" ::/edge-update/installed | grep -q edge_agent || die "the wheel was not moved to edge-update/installed/"
    grep -q "root filesystem read-only" "$WORK/console3.log" || die "the root filesystem stayed writable after the update"
    FAILED=$(failed_units "$WORK/console3.log")
    [ -z "$FAILED" ] || die "units failed on the third boot: $FAILED"
fi

# --- fourth boot: the data partition wiped (a broken card area, a bad flash): made anew, the device comes back ----
FOURTH=""
if [ "${EDGE_BOOT_ONCE:-0}" != 1 ]; then
    log "fourth boot with the data partition wiped: edge-data must make a new one and reboot; edge.toml applied again"
    # The whole partition as the first boot grew it, superblock backups included: nothing for e2fsck to repair.
    read -r DATA_START DATA_SECTORS < <(sfdisk -J "$DISK" | "$PY" -c \
        'import json, sys; p = json.load(sys.stdin)["partitiontable"]["partitions"][2]; print(p["start"], p["size"])')
    fallocate --punch-hole --offset $((DATA_START * 512)) --length $((DATA_SECTORS * 512)) "$DISK" \
        || dd if=/dev/zero of="$DISK" bs=512 seek="$DATA_START" count="$DATA_SECTORS" conv=notrunc status=none
    boot "$WORK/console4.log"
    HEALTH_TOKEN=- wait_healthy "$DEVICE_NAME" "$WORK/console4.log"
    FOURTH=$HEALTHY
    stop
    tr -d '\r' < "$WORK/console4.log" | grep -E "edge-data: |generated operator token" | sed 's/^/    console: /' || true
    grep -q "edge-data: .*making a new, empty data partition" "$WORK/console4.log" || die "the data partition was not made anew"
    grep -q "edge-data: after the repair at the last boot" "$WORK/console4.log" || die "no boot after the repair"
fi

cp "$WORK/console.log" "$OUT/boot-test-console.log"
if [ -f "$WORK/console2.log" ]; then cp "$WORK/console2.log" "$OUT/boot-test-console2.log"; fi
if [ -f "$WORK/console3.log" ]; then cp "$WORK/console3.log" "$OUT/boot-test-console3.log"; fi
if [ -f "$WORK/console4.log" ]; then cp "$WORK/console4.log" "$OUT/boot-test-console4.log"; fi
PASSED=1
echo
echo "test-boot.sh: PASS: first boot: /health showed telegrams from the emulated meter on /dev/ttyUSB0 and device" \
    "'$DEVICE_NAME' ${FIRST}s after qemu started (TCG, 2 vCPUs; systemd started at ${SYSTEMD_AT:-?}s; image" \
    "$((IMAGE_BYTES >> 20)) MiB, data partition grown by 2 GiB); token moved off the boot partition; hostname" \
    "applied; found as $DEVICE_NAME.local by mDNS with the API's service; root filesystem read-only; no unit" \
    "failed; trigger sandbox enforced; Imager's firstrun.sh ignored and removed"
if [ -n "$SECOND" ]; then
    echo "test-boot.sh: PASS: second boot with a bad edge.toml: the last good config in force, the error on the" \
        "console, healthy after ${SECOND}s; the root partition unchanged by both boots"
fi
if [ -n "$THIRD" ]; then
    echo "test-boot.sh: PASS: third boot: the agent wheel in edge-update/ on the boot partition was installed into" \
        "/opt/edge (edge-update-agent; the root read-only again afterwards), healthy after ${THIRD}s"
fi
if [ -n "$FOURTH" ]; then
    echo "test-boot.sh: PASS: fourth boot with the data partition wiped: made anew by edge-data, rebooted, edge.toml" \
        "applied again, healthy after ${FOURTH}s (both boots)"
fi
echo "test-boot.sh: console logs: $OUT/boot-test-console*.log"
