# Sourced by test-boot.sh and test-sandbox-arm64.sh: a working copy of a built image and what QEMU boots it with.
# Expects PY (a Python) and WORK (a scratch folder); uses sfdisk, mtools and xz.

# copy_image SOURCE DISK: the .img or .img.xz as a sparse file
copy_image() {
    case "$1" in
        *.xz) nice -n 10 xz -dc -T2 "$1" | dd of="$2" bs=1M conv=sparse status=none ;;
        *) cp --sparse=always "$1" "$2" ;;
    esac
}

# read_partitions DISK: BOOT_START, ROOT_START, ROOT_SECTORS (in sectors) and BOOT (the boot partition for mtools)
read_partitions() {
    read -r BOOT_START ROOT_START ROOT_SECTORS < <(sfdisk -J "$1" | "$PY" -c 'import json, sys
p = json.load(sys.stdin)["partitiontable"]["partitions"]
print(p[0]["start"], p[1]["start"], p[1]["size"])')
    BOOT="$1@@$((BOOT_START * 512))"
    export MTOOLS_SKIP_CHECK=1
}

# kernel_and_initrd: $WORK/kernel and $WORK/initrd, the ones config.txt on the boot partition names
kernel_and_initrd() {
    mcopy -o -i "$BOOT" ::/config.txt "$WORK/config.txt"
    KERNEL=$(sed -n 's/^kernel=//p' "$WORK/config.txt" | tail -1 | tr -d '\r')
    INITRD=$(sed -n 's/^initramfs \([^ ]*\).*/\1/p' "$WORK/config.txt" | tail -1 | tr -d '\r')
    [ -n "$KERNEL" ] && [ -n "$INITRD" ] || { echo "no kernel= / initramfs lines in config.txt" >&2; return 1; }
    mcopy -o -i "$BOOT" "::/$KERNEL" "$WORK/kernel"
    mcopy -o -i "$BOOT" "::/$INITRD" "$WORK/initrd"
}

# qemu_append CMDLINE_FILE: the Pi's command line with the console on the virt machine's PL011 UART
qemu_append() {
    echo "$(tr -d '\r\n' < "$1" | sed 's/console=[^ ]*//g; s/  */ /g') console=ttyAMA0"
}
