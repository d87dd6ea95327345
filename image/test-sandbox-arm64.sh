#!/usr/bin/env bash
# The trigger sandbox's test suites (tests/test_sandbox.py, the escape suite tests/test_sandbox_escapes.py, the
# cross-row relays tests/test_sandbox_isolation.py and the closed language's tests/test_sandbox_closed.py) run
# inside the built image, on its own aarch64 kernel and Python, under QEMU (TCG): the seccomp allow-list names
# system calls, and aarch64 has other numbers and no legacy calls (open, stat...) than x86-64, where the suites
# run in `make test`. Slow (tens of minutes under TCG); run it before a release, beside test-boot.sh.
#
#   sudo image/test-sandbox-arm64.sh [IMAGE]     # default image/out/edge-<version>-arm64.img.xz (or .img)
#
# How: a copy of the image gets one extra unit in its root file system (written with debugfs, in the copy only:
# the image has no way to run code from outside), and a second disk with the tests and pytest (pure-Python wheels
# from PyPI). At boot the unit mounts that disk and runs pytest as root with the image's /opt/edge/bin/python (the
# sandbox drops to its own unprivileged user, as on a device); the console carries the result.
set -euo pipefail

IMAGE_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$IMAGE_DIR/.." && pwd)
. "$IMAGE_DIR/qemu-common.sh"
OUT=${EDGE_OUT:-$IMAGE_DIR/out}
TIMEOUT=${EDGE_SUITE_TIMEOUT:-3600}
PY=${EDGE_PYTHON:-$REPO/.venv/bin/python}
log() { printf '%s [%4ds] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*"; }
die() { echo "test-sandbox-arm64.sh: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
for cmd in qemu-system-aarch64 mcopy sfdisk debugfs mkfs.ext4 xz; do command -v "$cmd" >/dev/null || die "missing $cmd"; done
VERSION=$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$REPO/pyproject.toml")
SOURCE=${1:-$OUT/edge-$VERSION-arm64.img.xz}
[ -f "$SOURCE" ] || SOURCE=${SOURCE%.xz}
[ -f "$SOURCE" ] || die "no image: build it with image/build.sh"

WORK=$(mktemp -d "$OUT/sandbox-suite.XXXXXX")
QEMU_PID=""
cleanup() {
    [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null && wait "$QEMU_PID" 2>/dev/null
    if [ "${PASSED:-0}" = 1 ] && [ "${EDGE_KEEP:-0}" != 1 ]; then rm -rf "$WORK"; else echo "kept: $WORK"; fi
    return 0
}
trap cleanup EXIT

log "image: $SOURCE"
DISK=$WORK/disk.img
copy_image "$SOURCE" "$DISK"
read_partitions "$DISK"

# --- the test disk: the four suites (and what they import from tests/), pytest, hypothesis ----------------------------------
SUITE=$WORK/suite
mkdir -p "$SUITE/tests" "$SUITE/site"
cp "$REPO"/tests/__init__.py "$REPO"/tests/conftest.py "$REPO"/tests/test_sandbox.py \
    "$REPO"/tests/test_sandbox_escapes.py "$REPO"/tests/test_sandbox_isolation.py \
    "$REPO"/tests/test_sandbox_closed.py "$SUITE/tests/"
printf '[pytest]\naddopts = -ra\nmarkers =\n    slow: slow\n    hil: hil\n' > "$SUITE/pytest.ini"
# (pip's resolver may warn that the host venv's pycanon pins another typing_extensions: not this folder's concern)
"$PY" -m pip install -q --disable-pip-version-check --no-compile --only-binary=:all: --target "$SUITE/site" \
    pytest pytest-asyncio hypothesis > "$WORK/pip.log" 2>&1 || die "pip: $(tail -5 "$WORK/pip.log")"
mkfs.ext4 -q -F -L EDGESUITE -d "$SUITE" "$WORK/suite.ext4" 256M

# --- one unit in the copy's root: mount the test disk, run the suites, report on the console ----------------------
cat > "$WORK/edge-sandbox-suite.service" <<'EOF'
[Unit]
Description=Edge: the sandbox test suites on this machine (test copy only)
After=multi-user.target edge-agent.service
[Service]
Type=oneshot
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
ExecStart=/bin/sh -c 'mount -o ro /dev/disk/by-label/EDGESUITE /mnt && cd /mnt && PYTHONPATH=/mnt/site:/mnt \
  HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis \
  PYTHONDONTWRITEBYTECODE=1 /opt/edge/bin/python -m pytest -q -p no:cacheprovider -c /mnt/pytest.ini \
  tests/test_sandbox.py tests/test_sandbox_escapes.py tests/test_sandbox_isolation.py tests/test_sandbox_closed.py; \
  echo "EDGE-SANDBOX-SUITE-EXIT=$?"'
[Install]
WantedBy=multi-user.target
EOF
dd if="$DISK" of="$WORK/root.ext4" bs=512 skip="$ROOT_START" count="$ROOT_SECTORS" conv=sparse status=none
debugfs -w "$WORK/root.ext4" -f - > "$WORK/debugfs.log" 2>&1 <<EOF
write $WORK/edge-sandbox-suite.service /etc/systemd/system/edge-sandbox-suite.service
cd /etc/systemd/system/multi-user.target.wants
symlink edge-sandbox-suite.service /etc/systemd/system/edge-sandbox-suite.service
EOF
grep -qi "error\|not found" "$WORK/debugfs.log" && die "debugfs: $(cat "$WORK/debugfs.log")"
dd if="$WORK/root.ext4" of="$DISK" bs=512 seek="$ROOT_START" conv=notrunc,sparse status=none
rm -f "$WORK/root.ext4"

# --- boot ------------------------------------------------------------------------------------------------------
kernel_and_initrd || die "the boot partition has no kernel to boot"
mcopy -i "$BOOT" ::/cmdline.txt "$WORK/cmdline.txt"
APPEND=$(qemu_append "$WORK/cmdline.txt")
log "booting (TCG, 2 vCPUs); the suites run after the agent has started (up to ${TIMEOUT}s)"
nice -n 10 qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1536 -display none -monitor none \
    -serial "file:$WORK/console.log" -kernel "$WORK/kernel" -initrd "$WORK/initrd" -append "$APPEND" \
    -drive "file=$DISK,format=raw,if=none,id=d" -device virtio-blk-pci,drive=d \
    -drive "file=$WORK/suite.ext4,format=raw,if=none,id=s" -device virtio-blk-pci,drive=s \
    -netdev user,id=n -device virtio-net-pci,netdev=n,romfile= -device virtio-rng-pci \
    >> "$WORK/qemu.log" 2>&1 &
QEMU_PID=$!
for _ in $(seq "$TIMEOUT"); do
    grep -aq "EDGE-SANDBOX-SUITE-EXIT=" "$WORK/console.log" 2>/dev/null && break
    kill -0 "$QEMU_PID" 2>/dev/null || die "qemu exited"
    sleep 1
done
tr -d '\r' < "$WORK/console.log" | sed 's/\x1b\[[0-9;]*m//g' | grep -aE "passed|failed|error|FAILED|ERROR|EDGE-SANDBOX" \
    | grep -v "^\[ *[0-9.]*\] " | tail -40 | sed 's/^/    /'
cp "$WORK/console.log" "$OUT/sandbox-suite-console.log"
EXIT=$(grep -ao "EDGE-SANDBOX-SUITE-EXIT=[0-9]*" "$WORK/console.log" | tail -1 | cut -d= -f2)
[ -n "$EXIT" ] || die "the suites did not finish within ${TIMEOUT}s (console: $OUT/sandbox-suite-console.log)"
[ "$EXIT" = 0 ] || die "the sandbox suites failed on aarch64 (exit $EXIT; console: $OUT/sandbox-suite-console.log)"
PASSED=1
log "PASS: the sandbox's four test suites passed on the image's aarch64 kernel and Python"
