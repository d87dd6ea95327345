#!/usr/bin/env bash
# The slow, rarely changing base layer of the Edge image: Debian bookworm arm64 with the kernel, the Raspberry Pi
# firmware, Python and the system services, built by mmdebstrap under qemu-user. Writes one tarball (argument 1).
# build.sh caches it under a key made from every file in this folder: edit anything here and the next build makes
# a new base (about 8 minutes on 2 cores); the application layer goes on top of it in about a minute.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT_TAR=$1
MIRROR=${EDGE_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${EDGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm

PACKAGES=(
    # boot and system
    systemd-sysv udev kmod dbus initramfs-tools linux-image-arm64 raspi-firmware firmware-brcm80211 wireless-regdb
    e2fsprogs fdisk dosfstools ca-certificates netbase iproute2 iputils-ping
    # network: systemd-networkd (in systemd), Wi-Fi, DNS, time, mDNS
    wpasupplicant systemd-resolved systemd-timesyncd avahi-daemon libnss-mdns
    # the agent
    python3 python3-venv libseccomp2
)

# Keep manuals, docs (but their copyright files) and translations out of the image.
DPKG_EXCLUDES=(
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
)

include=$(IFS=,; echo "${PACKAGES[*]}")
mmdebstrap --mode=root --format=tar --variant=minbase --architectures=arm64 --components=main,non-free-firmware \
    --include="$include" "${DPKG_EXCLUDES[@]}" \
    --setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks" "$1/boot/firmware"' \
    --setup-hook="install -m 0644 '$HERE/initramfs-edge.conf' \"\$1/etc/initramfs-tools/conf.d/edge\"" \
    --setup-hook="install -m 0644 '$HERE/fstab' \"\$1/etc/fstab\"" \
    --setup-hook="install -m 0755 '$HERE/initramfs-hook-edge-modules' \"\$1/etc/initramfs-tools/hooks/edge-modules\"" \
    --customize-hook='chroot "$1" python3 -m venv /opt/edge' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$SUITE" "$OUT_TAR" \
    "deb $MIRROR $SUITE main non-free-firmware" \
    "deb $MIRROR $SUITE-updates main non-free-firmware" \
    "deb $SECURITY_MIRROR $SUITE-security main non-free-firmware"
