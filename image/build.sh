#!/usr/bin/env bash
# Builds the flashable Raspberry Pi image of Edge: image/out/edge-<version>-arm64.img.xz (Pi 3, 3+, 4, 400, CM4,
# Zero 2 W; 64-bit Debian bookworm). Run as root on a Debian (bookworm) machine; no Docker, no loop devices.
#
#   sudo image/build.sh                 # cached base layer + this repo's agent -> out/edge-<version>-arm64.img.xz
#   sudo image/build.sh --rebuild-base  # also rebuild the base layer (Debian security updates; about 8 minutes)
#   sudo image/build.sh --no-xz         # stop at the raw out/edge-<version>-arm64.img (for quick boot tests)
#   sudo image/build.sh --release       # xz -6 instead of -1: 20% smaller download, 5 minutes instead of 40 s
#
# Layers: the base (Debian, kernel, firmware, Python, services; image/base/) is cached in image/.cache/ under a hash
# of image/base/; the application layer (the agent's wheel and its aarch64 dependency wheels from PyPI in the venv
# /opt/edge, the user `edge`, the units, image/rootfs/ and image/boot/) is redone on every build, in about a minute.
# The disk: an MBR with a FAT boot partition (label RASPIFIRM), an ext4 root (RASPIROOT, mounted read-only) and an
# ext4 data partition (EDGEDATA, /data, grown to the card on the first boot), built from directories with
# mkfs.vfat + mcopy and mkfs.ext4 -d, laid out with sfdisk on a plain file. See image/README.md.
set -euo pipefail

IMAGE_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$IMAGE_DIR/.." && pwd)
OUT=${EDGE_OUT:-$IMAGE_DIR/out}
CACHE=${EDGE_CACHE:-$IMAGE_DIR/.cache}
XZ_LEVEL=${EDGE_XZ_LEVEL:--1}
NICE=(nice -n 10)
REBUILD_BASE=0
COMPRESS=1
for arg in "$@"; do
    case "$arg" in
        --rebuild-base) REBUILD_BASE=1 ;;
        --no-xz) COMPRESS=0 ;;
        --release) XZ_LEVEL=${EDGE_XZ_LEVEL:--6} ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

log() { printf '%s [%4ds] %s\n' "$(date +%H:%M:%S)" "$SECONDS" "$*"; }
die() { echo "build.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap --mode=root, chroot, file ownership in the root filesystem)"

# --- host tools ---------------------------------------------------------------------------------------------
host_packages() {
    local -A need=([mmdebstrap]=mmdebstrap [arch-test]=arch-test [update-binfmts]=binfmt-support
        [mkfs.vfat]=dosfstools [mcopy]=mtools [sfdisk]=fdisk [mkfs.ext4]=e2fsprogs [xz]=xz-utils
        [python3]=python3 [chroot]=coreutils)
    local missing=() cmd
    for cmd in "${!need[@]}"; do command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}"); done
    [ "$(uname -m)" = aarch64 ] || [ -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] || [ -e /usr/bin/qemu-aarch64-static ] \
        || missing+=(qemu-user-static)
    python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing host packages: ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# arm64 programs run under qemu-user through binfmt_misc; on machines whose PID 1 is not systemd nobody mounts it.
enable_binfmt() {
    [ "$(uname -m)" = aarch64 ] && return 0
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    arch-test arm64 >/dev/null || die "arm64 binaries do not run here (binfmt_misc + qemu-user-static)"
}

host_packages
enable_binfmt
VERSION=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$REPO/pyproject.toml")
NAME=edge-$VERSION-arm64
mkdir -p "$OUT" "$CACHE"
log "building $NAME"

# --- base layer (cached) ------------------------------------------------------------------------------------
BASE_KEY=$(cd "$IMAGE_DIR/base" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
BASE_TAR=$CACHE/base-$BASE_KEY.tar
[ "$REBUILD_BASE" = 1 ] && rm -rf "$CACHE"/deps-*
if [ "$REBUILD_BASE" = 1 ] || [ ! -s "$BASE_TAR" ]; then
    log "base layer $BASE_KEY: building with mmdebstrap (about 8 minutes; log in $CACHE/base-$BASE_KEY.log)"
    rm -rf "$BASE_TAR.part"
    if ! "${NICE[@]}" "$IMAGE_DIR/base/build-base.sh" "$BASE_TAR.part" > "$CACHE/base-$BASE_KEY.log" 2>&1; then
        tail -30 "$CACHE/base-$BASE_KEY.log" >&2
        die "the base layer failed; the whole log is $CACHE/base-$BASE_KEY.log"
    fi
    [ -f "$BASE_TAR.part" ] || die "the base layer is not a tarball: $BASE_TAR.part"
    mv "$BASE_TAR.part" "$BASE_TAR"
    find "$CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "base-$BASE_KEY.tar" -delete
    log "base layer done"
else
    log "base layer $BASE_KEY: cached"
fi

# --- wheels: the agent from this repo, its dependencies as aarch64 wheels -----------------------------------
# Resolve on the host (sdist-only pure-Python dependencies such as sdnotify become py3-none-any wheels here), then
# fetch every platform-specific one again, same version, as a manylinux aarch64 wheel for CPython 3.11. The
# dependency wheels are cached per pyproject.toml; --rebuild-base resolves them again too.
WHEELS=$OUT/wheels
DEPS_KEY=$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)   # dependencies change only with pyproject.toml
DEPS=$CACHE/deps-$DEPS_KEY
rm -rf "$WHEELS"
mkdir -p "$WHEELS"
export PIP_DISABLE_PIP_VERSION_CHECK=1
log "wheels: the agent and its dependencies"
python3 -m pip wheel -q --no-deps -w "$WHEELS" "$REPO"
if [ ! -d "$DEPS" ]; then
    rm -rf "$DEPS.part" "$OUT/host-wheels"
    mkdir -p "$DEPS.part" "$OUT/host-wheels"
    python3 -m pip wheel -q --cache-dir "$CACHE/pip" -w "$OUT/host-wheels" "$WHEELS"/edge_agent-*.whl
    for wheel in "$OUT"/host-wheels/*.whl; do
        base=$(basename "$wheel")
        case "$base" in
            edge_agent-*) ;;
            *-py3-none-any.whl|*-py2.py3-none-any.whl) cp "$wheel" "$DEPS.part/" ;;
            *)  dist=${base%%-*}; rest=${base#*-}; ver=${rest%%-*}
                python3 -m pip download -q --cache-dir "$CACHE/pip" --no-deps --only-binary=:all: \
                    --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 --python-version 3.11 \
                    --implementation cp --abi cp311 -d "$DEPS.part" "$dist==$ver" ;;
        esac
    done
    rm -rf "$OUT/host-wheels"
    find "$CACHE" -maxdepth 1 -name 'deps-*' ! -name "deps-$DEPS_KEY.part" -type d -exec rm -rf {} +
    mv "$DEPS.part" "$DEPS"
else
    log "wheels: dependencies cached ($DEPS)"
fi
cp "$DEPS"/*.whl "$WHEELS/"
ls "$WHEELS" | sed 's/^/    /'

# --- application layer --------------------------------------------------------------------------------------
WORK=$OUT/work
ROOTFS=$WORK/rootfs
BOOTFS=$WORK/bootfs
cleanup() {
    for m in "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
    return 0
}
trap cleanup EXIT
cleanup
rm -rf "$WORK"
mkdir -p "$ROOTFS"
log "application layer: unpacking the base"
tar -C "$ROOTFS" --numeric-owner --xattrs --xattrs-include='*' -xpf "$BASE_TAR"
mount -t proc proc "$ROOTFS/proc"
in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$ROOTFS" "$@"; }

log "application layer: agent into /opt/edge"
mkdir -p "$ROOTFS/tmp/edge-wheels"
cp "$WHEELS"/*.whl "$ROOTFS/tmp/edge-wheels/"
in_root /opt/edge/bin/python -m pip install -q --no-index --no-cache-dir --disable-pip-version-check --no-compile \
    --find-links /tmp/edge-wheels "edge-agent==$VERSION"
# Byte-compile on the host when it runs CPython 3.11 too (same .pyc format; much faster than under emulation), with
# the paths as the device sees them. The agent cannot write .pyc files itself (ProtectSystem=strict).
site=$(cd "$ROOTFS" && echo opt/edge/lib/python3.*/site-packages)
if python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    python3 -m compileall -q -j 2 -s "$ROOTFS" -p / "$ROOTFS/$site" >/dev/null || true
else
    in_root /opt/edge/bin/python -m compileall -q "/$site" >/dev/null || true
fi
in_root /opt/edge/bin/python -m pip freeze --disable-pip-version-check > "$OUT/$NAME.packages.txt"
cp "$OUT/$NAME.packages.txt" "$ROOTFS/opt/edge/installed-packages.txt"
rm -rf "$ROOTFS/tmp/edge-wheels"
in_root /opt/edge/bin/edge-agent --help > /dev/null

log "application layer: user, units, configuration"
in_root sh -c 'getent passwd edge >/dev/null || useradd --system --user-group --groups dialout \
    --home-dir /var/lib/edge --no-create-home --shell /usr/sbin/nologin --comment "Edge agent" edge'
cp -r --no-preserve=ownership "$IMAGE_DIR/rootfs/." "$ROOTFS/"
install -m 0644 "$IMAGE_DIR/systemd/edge-agent.service" "$IMAGE_DIR/systemd/edge-firstboot.service" \
    "$ROOTFS/etc/systemd/system/"
install -m 0755 "$IMAGE_DIR/update-agent.sh" "$ROOTFS/usr/local/sbin/edge-update-agent"
# The root filesystem is read-only on the device: what edge-firstboot sets on every boot lives in /run (tmpfs).
# PID 1 finds no hostname before edge-firstboot has set it; systemd-resolved answers for the hostname (no hosts line).
ln -sfn ../run/edge/hostname "$ROOTFS/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOTFS/etc/hosts"
mkdir -p "$ROOTFS/etc/issue.d"
ln -sfn ../../run/edge/issue "$ROOTFS/etc/issue.d/edge.issue"
ln -sf /usr/share/zoneinfo/Etc/UTC "$ROOTFS/etc/localtime"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$ROOTFS/etc/resolv.conf"
: > "$ROOTFS/etc/machine-id"   # empty: on the read-only root systemd makes a new one in RAM on every boot
ln -sfn /etc/machine-id "$ROOTFS/var/lib/dbus/machine-id"   # what dbus's tmpfiles.d line makes
# /etc/default/raspi-firmware, read again by the kernel hook at every kernel update on the device:
# - a serial console would share the GPIO UART with a P1 meter on /dev/serial0: the console is the screen only;
# - root by label, as this image's partitions are labelled;
# - no cma= on the command line: the hook adds cma=64M unless it runs on a Pi 4, and a Pi 4 does not boot with it;
#   one image for every model leaves the kernel's default.
sed -i 's/^#\?CONSOLES=.*/CONSOLES="tty0"/; s/^#\?ROOTPART=.*/ROOTPART=LABEL=RASPIROOT/; s/^#\?CMA=.*/CMA=0/' \
    "$ROOTFS/etc/default/raspi-firmware"
grep -q '^CMA=0' "$ROOTFS/etc/default/raspi-firmware" || echo 'CMA=0' >> "$ROOTFS/etc/default/raspi-firmware"
in_root systemctl enable --quiet edge-data.service edge-firstboot.service edge-agent.service \
    systemd-networkd.service systemd-resolved.service systemd-timesyncd.service avahi-daemon.service
# apt's timers, and dpkg's daily database backup (it writes /var/backups, on the read-only root).
in_root systemctl disable --quiet apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer 2>/dev/null || true
in_root systemctl disable --quiet wpa_supplicant.service   # the D-Bus one; Wi-Fi is wpa_supplicant@wlan0
in_root systemctl mask --quiet systemd-firstboot.service wpa_supplicant.service
# Regenerate config.txt and cmdline.txt on the boot partition from /etc/default/raspi-firmware.
kver=$(basename "$(ls -d "$ROOTFS"/lib/modules/* | sort -V | tail -1)")
in_root env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware "$kver"
cat >> "$ROOTFS/etc/issue" <<'EOF'
Edge smart-meter agent. Configuration: edge.toml on the boot partition (see edge.toml.example there).
EOF
# What systemd-tmpfiles would create on the root at boot, made now: it cannot there (read-only). /var/log and
# /var/tmp are tmpfs on the device, /var/lib/systemd moves to the data partition below.
in_root systemd-tmpfiles --create --boot --exclude-prefix=/dev --exclude-prefix=/proc --exclude-prefix=/sys \
    --exclude-prefix=/run --exclude-prefix=/tmp --exclude-prefix=/var/tmp --exclude-prefix=/var/log \
    || log "warning: systemd-tmpfiles in the build chroot reported errors (the boot test shows whether they matter)"
# Mark /etc and /var as up to date with /usr (what systemd-update-done writes; Debian does not ship it), so that
# units with ConditionNeedsUpdate= (systemd-sysusers) do not try to write the read-only root on every boot.
for stamp in "$ROOTFS/etc/.updated" "$ROOTFS/var/.updated"; do
    printf 'TIMESTAMP_NSEC=%s\n' "$(stat -c %Y "$ROOTFS/usr")000000000" > "$stamp"
    touch -r "$ROOTFS/usr" "$stamp"
done
cleanup

# --- the data partition: everything that changes on the device ------------------------------------------------
# Mounted at /data; image/base/fstab bind-mounts its folders over /var/lib/edge (the agent's store), /etc/edge (its
# config and secrets) and /var/lib/systemd (the clock timesyncd keeps for a Pi without a real-time clock, the random
# seed, rfkill state).
log "data partition"
DATAFS=$WORK/datafs
EDGE_UID=$(in_root id -u edge)
EDGE_GID=$(in_root id -g edge)
mkdir -p "$DATAFS"
install -d -m 0750 -o "$EDGE_UID" -g "$EDGE_GID" "$DATAFS/edge"
install -d -m 0750 -o 0 -g "$EDGE_GID" "$DATAFS/etc-edge"
mv "$ROOTFS/var/lib/systemd" "$DATAFS/var-lib-systemd"
install -d -m 0755 "$ROOTFS/var/lib/systemd" "$ROOTFS/data"
rm -rf "$ROOTFS/etc/edge" "$ROOTFS/var/lib/edge"
install -d -m 0750 -o 0 -g "$EDGE_GID" "$ROOTFS/etc/edge" "$ROOTFS/var/lib/edge"   # mount points

# --- boot partition contents --------------------------------------------------------------------------------
log "boot partition"
mv "$ROOTFS/boot/firmware" "$BOOTFS"
mkdir -m 0755 "$ROOTFS/boot/firmware"
cp "$IMAGE_DIR/boot/edge.toml" "$IMAGE_DIR/boot/edge.toml.example" "$BOOTFS/"
printf 'Edge %s: edit edge.toml (every key: edge.toml.example), then boot.\r\n' "$VERSION" > "$BOOTFS/EDGE-README.txt"
grep -q 'root=LABEL=RASPIROOT' "$BOOTFS/cmdline.txt" || die "cmdline.txt on the boot partition: no root=LABEL=RASPIROOT"
# Mount the root read-only from the start (the initramfs checks it, nothing ever writes it); fstab says ro as well.
sed -i 's/ rw / ro /' "$BOOTFS/cmdline.txt"
# The kernel hook writes "rw" again at every kernel update; a later "ro" wins (kernel and initramfs alike).
echo ro > "$ROOTFS/etc/default/raspi-extra-cmdline"
grep -q ' ro ' "$BOOTFS/cmdline.txt" || die "cmdline.txt on the boot partition: the root is not mounted ro"
sed -n '1p' "$BOOTFS/cmdline.txt" | sed 's/^/    cmdline.txt: /'

# --- the disk image -----------------------------------------------------------------------------------------
IMG=$OUT/$NAME.img
BOOT_MIB=256
START_MIB=4
ROOT_USED_MIB=$(du -sm --apparent-size "$ROOTFS" | cut -f1)
VENV_MIB=$(du -sm --apparent-size "$ROOTFS/opt/edge" | cut -f1)
# The root does not grow: room for the agent's venv three times (edge-update-agent keeps the previous one, and pip
# holds a replaced package's old files until the new ones are in) and 15% more.
ROOT_MIB=$(( ((ROOT_USED_MIB + 2 * VENV_MIB) * 115 / 100 + 128 + 3) / 4 * 4 ))
DATA_MIB=256   # grown to the rest of the card on the first boot
log "disk image: boot ${BOOT_MIB} MiB, root ${ROOT_MIB} MiB (${ROOT_USED_MIB} MiB used, venv ${VENV_MIB} MiB)," \
    "data ${DATA_MIB} MiB"
rm -f "$IMG" "$WORK/boot.vfat" "$WORK/root.ext4" "$WORK/data.ext4"
mkfs.vfat -F 32 -n RASPIFIRM -C "$WORK/boot.vfat" $((BOOT_MIB * 1024)) >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -p -m -i "$WORK/boot.vfat" "$BOOTFS"/* ::/
"${NICE[@]}" mkfs.ext4 -q -F -L RASPIROOT -b 4096 -d "$ROOTFS" -E root_owner=0:0 "$WORK/root.ext4" "${ROOT_MIB}M"
# One inode per 64 KiB: the store keeps few, large files, and mke2fs's "small" ratio for 256 MiB would give a grown
# partition an inode table of 6% of the card (zeroed in the background: SD-card writes for nothing).
mkfs.ext4 -q -F -L EDGEDATA -b 4096 -i 65536 -d "$DATAFS" -E root_owner=0:0 "$WORK/data.ext4" "${DATA_MIB}M"
truncate -s $(( (START_MIB + BOOT_MIB + ROOT_MIB + DATA_MIB) * 1024 * 1024 )) "$IMG"
sfdisk -q "$IMG" <<EOF
label: dos
unit: sectors
start=$((START_MIB * 2048)), size=$((BOOT_MIB * 2048)), type=c, bootable
start=$(((START_MIB + BOOT_MIB) * 2048)), size=$((ROOT_MIB * 2048)), type=83
start=$(((START_MIB + BOOT_MIB + ROOT_MIB) * 2048)), size=$((DATA_MIB * 2048)), type=83
EOF
dd if="$WORK/boot.vfat" of="$IMG" bs=1M seek=$START_MIB conv=notrunc,sparse status=none
dd if="$WORK/root.ext4" of="$IMG" bs=1M seek=$((START_MIB + BOOT_MIB)) conv=notrunc,sparse status=none
dd if="$WORK/data.ext4" of="$IMG" bs=1M seek=$((START_MIB + BOOT_MIB + ROOT_MIB)) conv=notrunc,sparse status=none
[ "${EDGE_KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"   # EDGE_KEEP_WORK=1: keep the trees for a look
log "disk image: $IMG ($(du -m --apparent-size "$IMG" | cut -f1) MiB)"

if [ "$COMPRESS" = 1 ]; then
    log "compressing: xz $XZ_LEVEL"
    rm -f "$IMG.xz"
    "${NICE[@]}" xz -T2 "$XZ_LEVEL" -k "$IMG"
    (cd "$OUT" && sha256sum "$NAME.img.xz" > "$NAME.img.xz.sha256")
    log "done: $IMG.xz ($(du -m "$IMG.xz" | cut -f1) MiB)"
else
    log "done: $IMG (not compressed: --no-xz)"
fi
