#!/bin/sh
# Updates the Edge agent in place on a device: installs a new wheel into the venv /opt/edge, checks the config in
# force with the new version, restarts the agent and waits for its API; data (/var/lib/edge) and config (/etc/edge)
# stay as they are. On the image this script is /usr/local/sbin/edge-update-agent. The image's root filesystem is
# read-only: it is made writable for the update and read-only again afterwards.
#
#   edge-update-agent edge_agent-0.2.0-py3-none-any.whl [dependency wheels...]   # offline: wheels given here only
#   edge-update-agent DIR                     # every wheel in DIR (the agent's and its aarch64 dependencies)
#   edge-update-agent --online edge_agent-0.2.0-py3-none-any.whl     # missing dependencies from PyPI
#   edge-update-agent --rollback              # back to the venv before the last update
#   edge-update-agent --recover               # only finish what an interrupted update left (edge-firstboot, at boot)
#
# Wheels: `pip wheel --no-deps .` in the repo for the agent; image/build.sh leaves the agent's and every aarch64
# dependency wheel in image/out/wheels/ (copy that folder to the device). Without ssh: put the wheels in a folder
# edge-update/ on the boot partition; edge-firstboot runs this script with them at the next boot.
# A failed check or an agent that does not answer within 60 s puts the previous venv back. So does the next run (or
# the next boot) after an update that was interrupted (power cut): a mark on the data partition says so.
set -eu

VENV=${EDGE_VENV:-/opt/edge}
PREVIOUS=$VENV.previous
CONFIG=${EDGE_CONFIG:-/etc/edge/edge.toml}
# Present from the moment the venv may be half-changed until the update is done or undone (/etc/edge: data partition).
MARK=${EDGE_UPDATE_MARK:-$(dirname "$CONFIG")/.agent-update-in-progress}
UNIT=edge-agent.service
ONLINE=0
RESTART=1
ROLLBACK=0
RECOVER=0
say() { echo "edge-update-agent: $*"; }
die() { say "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --online) ONLINE=1 ;;
        --no-restart) RESTART=0 ;;
        --rollback) ROLLBACK=1 ;;
        --recover) RECOVER=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        --) shift; break ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || die "run as root"

restore() {  # each step can be cut by a power loss and done again
    [ -d "$PREVIOUS" ] || die "no previous venv in $PREVIOUS"
    rm -rf "$VENV.failed"
    if [ -d "$VENV" ]; then mv "$VENV" "$VENV.failed"; fi
    mv "$PREVIOUS" "$VENV"
    sync
    rm -f "$MARK"
    rm -rf "$VENV.failed"
    say "restored the previous agent: $("$VENV/bin/python" -m pip show edge-agent 2>/dev/null | sed -n 's/^Version: //p')"
    if [ "$RESTART" = 1 ]; then systemctl restart "$UNIT"; fi
}

api_answers() {  # any HTTP answer from /health (200, or 503 while a meter is not reading) counts as up
    "$VENV/bin/python" - "$CONFIG" <<'EOF'
import sys, time, tomllib, urllib.request, urllib.error
listen = tomllib.load(open(sys.argv[1], "rb")).get("api", {}).get("listen", "127.0.0.1:8080")
host, _, port = listen.rpartition(":")
host = "127.0.0.1" if host.strip("[]") in ("", "0.0.0.0", "::") else host.strip("[]")
deadline = time.time() + 60
while time.time() < deadline:
    try:
        urllib.request.urlopen(f"http://{host}:{port}/health", timeout=3)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except OSError:
        time.sleep(2)
sys.exit(1)
EOF
}

# The venv is on the root filesystem, read-only on the image: writable while this runs, read-only again at the end
# (after the restart, when no process holds a replaced file open any more).
REMOUNTED=""
STAGE=""
finish() {
    if [ -n "$STAGE" ]; then rm -rf "$STAGE"; fi
    if [ -n "$REMOUNTED" ]; then
        sync
        mount -o remount,ro "$REMOUNTED" 2>/dev/null || say "$REMOUNTED stays writable until the next reboot (busy)"
    fi
}
trap finish EXIT
trap 'exit 130' INT TERM HUP   # dash runs the EXIT trap only on exit: make a signal one
root_writable() {  # the filesystem holding the venv, if it is mounted read-only
    if findmnt -n -o OPTIONS --target "$VENV" | tr , '\n' | grep -qx ro; then
        REMOUNTED=$(findmnt -n -o TARGET --target "$VENV")
        mount -o remount,rw "$REMOUNTED" || { REMOUNTED=""; die "cannot make $VENV writable"; }
    fi
}

if [ -f "$MARK" ]; then
    say "an earlier update was interrupted: putting the agent from before it back"
    root_writable
    if [ -d "$PREVIOUS" ]; then restore; else rm -f "$MARK"; fi
fi
if [ "$RECOVER" = 1 ]; then exit 0; fi
if [ "$ROLLBACK" = 1 ]; then root_writable; restore; exit 0; fi
[ $# -gt 0 ] || die "give the agent's wheel (and its dependency wheels), or a folder of wheels; --help"

# Collect the wheels into one folder pip can search.
# On the data partition where there is one: /tmp is a 64 MiB tmpfs on the image, about the size of a release's wheels.
STAGE_IN=/tmp
if [ -d /data ] && [ -w /data ]; then STAGE_IN=/data; fi
STAGE=$(mktemp -d "$STAGE_IN/.edge-update.XXXXXX")
for item in "$@"; do
    if [ -d "$item" ]; then
        find "$item" -maxdepth 1 -name '*.whl' -exec cp {} "$STAGE/" \;
    elif [ -f "$item" ]; then
        cp "$item" "$STAGE/"
    else
        die "no such file or folder: $item"
    fi
done
AGENT_WHEEL=$(find "$STAGE" -maxdepth 1 -name 'edge_agent-*.whl' | sort -V | tail -1)
[ -n "$AGENT_WHEEL" ] || die "no edge_agent-*.whl among $*"
OLD=$("$VENV/bin/python" -m pip show edge-agent 2>/dev/null | sed -n 's/^Version: //p')

root_writable
say "keeping the current venv (agent $OLD) as $PREVIOUS"
rm -rf "$PREVIOUS"
cp -a "$VENV" "$PREVIOUS"
sync
: > "$MARK"   # from here on the venv may be half-changed
sync
INDEX="--no-index"
[ "$ONLINE" = 1 ] && INDEX=""
# shellcheck disable=SC2086  # INDEX is one option or none
if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir $INDEX \
        --find-links "$STAGE" --upgrade --upgrade-strategy only-if-needed "$AGENT_WHEEL" \
    || ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir --no-index --no-deps \
        --force-reinstall "$AGENT_WHEEL"; then   # the second: a rebuilt wheel with the same version number
    say "pip failed; putting the previous venv back"
    restore   # and restarts the agent, which may hold files pip replaced (the root can be read-only again then)
    exit 1
fi
NEW=$("$VENV/bin/python" -m pip show edge-agent | sed -n 's/^Version: //p')
"$VENV/bin/python" -m pip freeze --disable-pip-version-check > "$VENV/installed-packages.txt"

if [ -f "$CONFIG" ] && ! "$VENV/bin/edge-agent" check-config "$CONFIG"; then
    say "agent $NEW rejects the configuration in force ($CONFIG): going back to $OLD"
    restore
    exit 1
fi
if [ "$RESTART" = 1 ]; then
    systemctl restart "$UNIT"
    if ! api_answers; then
        say "agent $NEW does not answer on its API within 60 s: going back to $OLD"
        journalctl -u "$UNIT" -n 20 --no-pager || true
        restore
        exit 1
    fi
fi
rm -f "$MARK"
sync
say "agent $OLD -> $NEW; data in /var/lib/edge and config in /etc/edge kept. Undo: edge-update-agent --rollback"
