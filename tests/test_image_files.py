"""Fast checks of the Raspberry Pi image's own files (image/): the edge.toml on the boot partition and its example
are accepted by the agent, and edge-firstboot (which applies them on the device) does what the installer expects,
run here against a scratch directory instead of / . The image itself is built and booted by image/build.sh and
image/test-boot.sh (minutes, root, qemu), not here."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.config import parse_config

IMAGE = Path(__file__).resolve().parent.parent / "image"
FIRSTBOOT = IMAGE / "rootfs/usr/lib/edge/edge-firstboot"
CHECK_CONFIG = f"{sys.executable} -m agent.cli check-config"


def load_firstboot(tmp_path: Path, monkeypatch):
    root = tmp_path / "root"
    for sub in ("boot/firmware", "etc/edge", "var/lib/edge", "data", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("EDGE_ROOT", str(root))
    monkeypatch.setenv("EDGE_BOOT", str(root / "boot/firmware"))
    monkeypatch.setenv("EDGE_ETC", str(root / "etc/edge"))
    monkeypatch.setenv("EDGE_STATE", str(root / "var/lib/edge"))
    monkeypatch.setenv("EDGE_DATA", str(root / "data"))
    monkeypatch.setenv("EDGE_CHECK_CONFIG", CHECK_CONFIG)
    monkeypatch.setenv("PYTHONPATH", str(IMAGE.parent))
    loader = importlib.machinery.SourceFileLoader("edge_firstboot", str(FIRSTBOOT))
    spec = importlib.util.spec_from_loader("edge_firstboot", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module, root


def without_network(path: Path) -> dict:
    data = tomllib.loads(path.read_text())
    data.pop("network")
    return data


@pytest.mark.parametrize("name", ["edge.toml", "edge.toml.example"])
def test_boot_partition_files_are_valid_agent_configs(name):
    data = without_network(IMAGE / "boot" / name)
    config = parse_config(data, name)
    assert [m.port for m in config.meters] == ["/dev/ttyUSB0"]
    assert config.listen_host == "0.0.0.0" and config.listen_port == 8080


def test_example_shows_every_key_of_the_shipped_file():
    def keys(data, prefix=""):
        out = set()
        for key, value in data.items():
            value = value[0] if isinstance(value, list) and value and isinstance(value[0], dict) else value
            out |= keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
        return out

    shipped = keys(tomllib.loads((IMAGE / "boot/edge.toml").read_text()))
    example = keys(tomllib.loads((IMAGE / "boot/edge.toml.example").read_text()))
    assert shipped <= example


def test_placeholder_token_is_the_one_firstboot_replaces(tmp_path, monkeypatch):
    fb, _ = load_firstboot(tmp_path, monkeypatch)
    for name in ("edge.toml", "edge.toml.example"):
        assert tomllib.loads((IMAGE / "boot" / name).read_text())["auth"]["operator_token"] == fb.PLACEHOLDER_TOKEN


def test_strip_network_keeps_everything_else(tmp_path, monkeypatch):
    fb, _ = load_firstboot(tmp_path, monkeypatch)
    text = (IMAGE / "boot/edge.toml.example").read_text()
    stripped = fb.strip_table(text, "network")
    assert tomllib.loads(stripped) == without_network(IMAGE / "boot/edge.toml.example")
    assert "[network]" not in stripped and "# One [[meters]] table per meter." in stripped


def test_set_string_edits_only_that_value(tmp_path, monkeypatch):
    fb, _ = load_firstboot(tmp_path, monkeypatch)
    text = '[auth]\noperator_token = "abc\\"def-ghijklmnop"   # mine\n\n[[meters]]\nid = "a"\nport = "/dev/x"\n'
    new = fb.set_string(text, "auth", "operator_token", "moved-to-device", "  # note")
    assert tomllib.loads(new) == {"auth": {"operator_token": "moved-to-device"}, "meters": [{"id": "a", "port": "/dev/x"}]}
    assert "# note" in new
    added = fb.set_string('[device]\nname = "x"\n', "auth", "operator_token", "t" * 20)
    assert tomllib.loads(added)["auth"]["operator_token"] == "t" * 20


def test_network_checks(tmp_path, monkeypatch):
    fb, _ = load_firstboot(tmp_path, monkeypatch)
    assert fb.check_network({})["ethernet"] == "dhcp"
    static = fb.check_network({"ethernet": "static", "address": "192.168.1.50/24", "gateway": "192.168.1.1",
                               "dns": ["192.168.1.1"]})
    assert static["address"] == "192.168.1.50/24" and static["gateway"] == "192.168.1.1"
    for bad in ({"ethernet": "static", "address": "192.168.1.50"}, {"wifi_ssid": "home"},
                {"wifi_ssid": "home", "wifi_country": "NL", "wifi_key": "short"}, {"ssid": "typo"},
                {"ethernet": "dhcp4"}):
        with pytest.raises(fb.Problem):
            fb.check_network(bad)
    # IEEE 802.11i test vector (what wpa_passphrase computes)
    assert fb.wifi_psk("IEEE", "password") == "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    assert fb.hostname_for("Pole 17 / Köln") == "pole-17-k-ln"
    assert fb.hostname_for("---") == "edge"


def run_firstboot(fb):
    assert fb.main() == 0


def test_first_boot_with_the_shipped_file_generates_a_token(tmp_path, monkeypatch, capsys):
    fb, root = load_firstboot(tmp_path, monkeypatch)
    boot = root / "boot/firmware/edge.toml"
    boot.write_text((IMAGE / "boot/edge.toml").read_text())
    run_firstboot(fb)
    out = capsys.readouterr().out
    agent = tomllib.loads((root / "etc/edge/edge.toml").read_text())
    token = agent["auth"]["operator_token"]
    assert token != fb.PLACEHOLDER_TOKEN and len(token) >= 16
    assert (root / "etc/edge/operator-token").read_text().strip() == token
    assert f"generated operator token (also in /etc/edge/operator-token): {token}" in out
    assert "network" not in agent
    assert (root / "run/edge/hostname").read_text() == "edge\n"
    ethernet = (root / "run/systemd/network/20-edge-ethernet.network").read_text()
    assert "DHCP=yes" in ethernet and "ClientIdentifier=mac" in ethernet
    assert ethernet == (root / "etc/edge/network/20-edge-ethernet.network").read_text()  # kept on the data partition
    assert not (root / "run/systemd/network/30-edge-wifi.network").exists()
    assert f"Operator token (generated): {token}" in (root / "run/edge/issue").read_text()
    assert (root / "run/edge/issue").stat().st_mode & 0o777 == 0o640
    assert "<port>8080</port>" in (root / "run/edge/avahi-services/edge-api.service").read_text()
    assert not (root / "var/lib/edge/config-error.txt").exists()
    assert boot.read_text() == (IMAGE / "boot/edge.toml").read_text()  # nothing secret to move
    # the second boot keeps the same token and writes nothing new
    mtime = (root / "etc/edge/edge.toml").stat().st_mtime_ns
    run_firstboot(fb)
    assert tomllib.loads((root / "etc/edge/edge.toml").read_text())["auth"]["operator_token"] == token
    assert (root / "etc/edge/edge.toml").stat().st_mtime_ns == mtime


def test_own_token_and_wifi_key_move_off_the_boot_partition(tmp_path, monkeypatch):
    fb, root = load_firstboot(tmp_path, monkeypatch)
    boot = root / "boot/firmware/edge.toml"
    text = (IMAGE / "boot/edge.toml").read_text()
    text = text.replace(fb.PLACEHOLDER_TOKEN, "my-own-operator-token-1234").replace('name = "edge"', 'name = "Pole 17"')
    text = text.replace('wifi_country = ""', 'wifi_country = "nl"').replace('wifi_ssid = ""', 'wifi_ssid = "home"')
    text = text.replace('wifi_key = ""', 'wifi_key = "correct horse battery"')
    boot.write_text(text)
    run_firstboot(fb)
    left = boot.read_text()
    assert "my-own-operator-token-1234" not in left and "correct horse battery" not in left
    assert tomllib.loads(left)["auth"]["operator_token"] == fb.MOVED
    assert tomllib.loads((root / "etc/edge/edge.toml").read_text())["auth"]["operator_token"] == \
        "my-own-operator-token-1234"
    assert (root / "run/edge/hostname").read_text() == "pole-17\n"
    wpa = (root / "run/edge/wpa_supplicant-wlan0.conf").read_text()
    assert (root / "run/edge/wpa_supplicant-wlan0.conf").stat().st_mode & 0o777 == 0o600
    assert "Type=wlan" in (root / "run/systemd/network/30-edge-wifi.network").read_text()
    assert "country=NL" in wpa and f"ssid={b'home'.hex()}" in wpa and "correct horse" not in wpa
    assert f"psk={fb.wifi_psk('home', 'correct horse battery')}" in wpa
    # next boot: the notes on the boot partition mean "keep what is stored"
    run_firstboot(fb)
    assert tomllib.loads((root / "etc/edge/edge.toml").read_text())["auth"]["operator_token"] == \
        "my-own-operator-token-1234"
    assert f"psk={fb.wifi_psk('home', 'correct horse battery')}" in \
        (root / "run/edge/wpa_supplicant-wlan0.conf").read_text()
    assert not (root / "var/lib/edge/config-error.txt").exists()


def test_raspberry_pi_imager_customisation_is_undone(tmp_path, monkeypatch):
    fb, root = load_firstboot(tmp_path, monkeypatch)
    boot = root / "boot/firmware"
    (boot / "edge.toml").write_text((IMAGE / "boot/edge.toml").read_text())
    (boot / "cmdline.txt").write_text("console=tty0 root=LABEL=RASPIROOT rw rootwait systemd.run=/boot/firstrun.sh "
                                      "systemd.run_success_action=reboot systemd.unit=kernel-command-line.target\n")
    (boot / "firstrun.sh").write_text("#!/bin/bash\n")
    run_firstboot(fb)
    assert (boot / "cmdline.txt").read_text() == "console=tty0 root=LABEL=RASPIROOT rw rootwait\n"
    assert not (boot / "firstrun.sh").exists()


def test_file_saved_by_windows_notepad(tmp_path, monkeypatch):
    fb, root = load_firstboot(tmp_path, monkeypatch)
    text = (IMAGE / "boot/edge.toml").read_text().replace('name = "edge"', 'name = "win"')
    (root / "boot/firmware/edge.toml").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    run_firstboot(fb)
    assert not (root / "var/lib/edge/config-error.txt").exists()
    assert (root / "run/edge/hostname").read_text() == "win\n"


def test_bad_file_keeps_the_last_good_config(tmp_path, monkeypatch, capsys):
    fb, root = load_firstboot(tmp_path, monkeypatch)
    boot = root / "boot/firmware/edge.toml"
    boot.write_text((IMAGE / "boot/edge.toml").read_text())
    run_firstboot(fb)
    good = (root / "etc/edge/edge.toml").read_text()
    boot.write_text((IMAGE / "boot/edge.toml").read_text().replace('"dsmr5"', '"dsmr9"'))
    capsys.readouterr()
    run_firstboot(fb)
    assert (root / "etc/edge/edge.toml").read_text() == good
    error = (root / "var/lib/edge/config-error.txt").read_text()
    assert "meters[0].profile: unknown profile 'dsmr9'" in error
    assert "unknown profile 'dsmr9'" in capsys.readouterr().out
    boot.write_text("this is [not toml")
    run_firstboot(fb)
    assert "syntax" in (root / "var/lib/edge/config-error.txt").read_text()
    assert (root / "etc/edge/edge.toml").read_text() == good


def reboot(root: Path) -> None:
    """What a reboot does to the scratch root: /run is a tmpfs, emptied."""
    shutil.rmtree(root / "run")
    (root / "run").mkdir()


def test_a_bad_file_keeps_the_last_good_network_across_reboots(tmp_path, monkeypatch):
    fb, root = load_firstboot(tmp_path, monkeypatch)
    boot = root / "boot/firmware/edge.toml"
    text = (IMAGE / "boot/edge.toml").read_text()
    text = text.replace('wifi_country = ""', 'wifi_country = "BE"').replace('wifi_ssid = ""', 'wifi_ssid = "pole"')
    boot.write_text(text.replace('wifi_key = ""', 'wifi_key = "a-long-passphrase"'))
    run_firstboot(fb)
    published = {p.name: p.read_text() for p in (root / "run").rglob("*") if p.is_file()}
    # the next boot's file breaks the network table (a key the script does not know) and the TOML of the agent
    boot.write_text(boot.read_text().replace("[network]", "[network]\nwifi_channel = 6"))
    reboot(root)
    run_firstboot(fb)
    assert "network.wifi_channel: unknown key" in (root / "var/lib/edge/config-error.txt").read_text()
    for name in ("20-edge-ethernet.network", "30-edge-wifi.network", "wpa_supplicant-wlan0.conf"):
        assert published[name] == next((root / "run").rglob(name)).read_text(), name
    # no file at all: still the last good network
    boot.unlink()
    reboot(root)
    run_firstboot(fb)
    assert "key_mgmt=WPA-PSK" in (root / "run/edge/wpa_supplicant-wlan0.conf").read_text()
    # Wi-Fi turned off in a good file: its files go, from the data partition and from /run
    boot.write_text((IMAGE / "boot/edge.toml").read_text())
    run_firstboot(fb)
    assert not (root / "run/edge/wpa_supplicant-wlan0.conf").exists()
    assert not (root / "etc/edge/network/wpa_supplicant-wlan0.conf").exists()
    assert not (root / "run/systemd/network/30-edge-wifi.network").exists()


def test_never_configured_device_gets_ethernet_dhcp(tmp_path, monkeypatch):
    fb, root = load_firstboot(tmp_path, monkeypatch)
    (root / "boot/firmware/edge.toml").write_text("not toml [")
    run_firstboot(fb)
    assert "DHCP=yes" in (root / "run/systemd/network/20-edge-ethernet.network").read_text()
    assert "syntax" in (root / "var/lib/edge/config-error.txt").read_text()


def test_firstboot_writes_nothing_outside_the_data_partition_boot_and_run(tmp_path, monkeypatch):
    """The root filesystem is read-only on the device: every file the script writes must be under /etc/edge or
    /var/lib/edge (bind mounts of the data partition), /boot/firmware or /run."""
    fb, root = load_firstboot(tmp_path, monkeypatch)
    text = (IMAGE / "boot/edge.toml").read_text().replace(fb.PLACEHOLDER_TOKEN, "my-own-operator-token-1234")
    text = text.replace('wifi_country = ""', 'wifi_country = "NL"').replace('wifi_ssid = ""', 'wifi_ssid = "x"')
    (root / "boot/firmware/edge.toml").write_text(text)
    run_firstboot(fb)
    allowed = ("etc/edge/", "var/lib/edge/", "boot/firmware/", "run/")
    written = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    assert written and [w for w in written if not w.startswith(allowed)] == []


def test_bad_file_on_the_first_boot_still_gives_a_reachable_agent(tmp_path, monkeypatch):
    fb, root = load_firstboot(tmp_path, monkeypatch)
    (root / "boot/firmware/edge.toml").write_text('[[meters]]\nid = "x"\n')  # no port
    run_firstboot(fb)
    fallback = root / "etc/edge/edge.toml"
    result = subprocess.run([sys.executable, "-m", "agent.cli", "check-config", str(fallback)],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(IMAGE.parent)))
    assert result.returncode == 0, result.stderr
    assert "meters[0].port: is required" in (root / "var/lib/edge/config-error.txt").read_text()


def test_units_order_firstboot_before_the_agent():
    agent = (IMAGE / "systemd/edge-agent.service").read_text()
    firstboot = (IMAGE / "systemd/edge-firstboot.service").read_text()
    assert "After=network.target time-sync.target edge-firstboot.service" in agent
    assert "Before=network-pre.target systemd-networkd.service avahi-daemon.service edge-agent.service" in firstboot
    assert "ExecStart=/usr/lib/edge/edge-firstboot" in firstboot


def _fake_device_tree(tmp_path, uarts):
    """uarts: tty -> (node name, [pin group names], has a bluetooth child)."""
    sys_dir = tmp_path / "sys"
    base = sys_dir / "firmware/devicetree/base"
    gpio = base / "soc/gpio@7e200000"
    phandles = {}
    for group in ("uart0_gpio14", "uart0_gpio32", "uart0_ctsrts_gpio30", "uart1_gpio14", "gpclk2_gpio43"):
        (gpio / group).mkdir(parents=True)
        phandles[group] = len(phandles) + 7
        (gpio / group / "phandle").write_bytes(phandles[group].to_bytes(4, "big"))
    for tty, spec in uarts.items():
        (sys_dir / "class/tty" / tty / "device").mkdir(parents=True)
        if spec is None:
            continue
        node_name, groups, bluetooth = spec
        node = base / "soc" / node_name
        node.mkdir(parents=True)
        (node / "pinctrl-0").write_bytes(b"".join(phandles[g].to_bytes(4, "big") for g in groups))
        if bluetooth:
            (node / "bluetooth").mkdir()
        (sys_dir / "class/tty" / tty / "device/of_node").symlink_to(node)
    env = dict(os.environ, EDGE_SYS=str(sys_dir))

    def alias(tty):
        result = subprocess.run(["sh", str(IMAGE / "rootfs/usr/lib/edge/serial-alias"), tty],
                                capture_output=True, text=True, env=env)
        return result.stdout.strip() if result.returncode == 0 else None

    return alias


def test_serial0_follows_the_pins(tmp_path):
    """Pi 3/4/400/CM4/Zero 2 W with Debian's (upstream) device trees: the PL011 drives Bluetooth, the mini UART
    (ttyS1) is on GPIO 14/15 (pin groups as in bcm2837-rpi-3-b.dtb and bcm2711-rpi-4-b.dtb)."""
    alias = _fake_device_tree(tmp_path, {
        "ttyAMA0": ("serial@7e201000", ["uart0_ctsrts_gpio30", "uart0_gpio32"], True),
        "ttyS1": ("serial@7e215040", ["uart1_gpio14"], False),
        "ttyS0": None,
    })
    assert (alias("ttyS1"), alias("ttyAMA0"), alias("ttyS0"), alias("ttyUSB0")) == ("serial0", "serial1", None, None)


def test_serial0_on_a_compute_module_3_without_bluetooth(tmp_path):
    alias = _fake_device_tree(tmp_path, {"ttyAMA0": ("serial@7e201000", ["uart0_gpio14"], False)})
    assert alias("ttyAMA0") == "serial0"


def test_fstab_mounts_root_read_only_and_the_data_partition_where_the_writers_are():
    entries = [line.split() for line in (IMAGE / "base/fstab").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    by_target = {e[1]: e for e in entries}
    assert "ro" in by_target["/"][3].split(",")
    assert by_target["/"][5] == "0"  # not checked: e2fsck would write the superblock of the read-only root
    assert by_target["/data"][0] == "LABEL=EDGEDATA"
    binds = {e[1]: e[0] for e in entries if e[2] == "none" and "bind" in e[3].split(",")}
    # edge-firstboot's and the agent's writable places are on the data partition
    firstboot = FIRSTBOOT.read_text()
    assert 'os.environ.get("EDGE_ETC", "/etc/edge")' in firstboot and binds["/etc/edge"].startswith("/data/")
    assert 'os.environ.get("EDGE_STATE", "/var/lib/edge")' in firstboot and binds["/var/lib/edge"].startswith("/data/")
    assert "StateDirectory=edge\n" in (IMAGE / "systemd/edge-agent.service").read_text()
    assert binds["/var/lib/systemd"].startswith("/data/")  # timesyncd's clock survives a reboot
    assert {by_target[t][2] for t in ("/tmp", "/var/tmp", "/var/log")} == {"tmpfs"}
    # build.sh makes those folders on the data partition
    build = (IMAGE / "build.sh").read_text()
    for source in binds.values():
        assert f'"$DATAFS/{source.removeprefix("/data/")}"' in build, source


def test_an_unchanged_file_costs_no_writes_on_the_card_at_the_next_boot(tmp_path, monkeypatch):
    fb, root = load_firstboot(tmp_path, monkeypatch)
    text = (IMAGE / "boot/edge.toml").read_text().replace(fb.PLACEHOLDER_TOKEN, "my-own-operator-token-1234")
    text = text.replace('wifi_country = ""', 'wifi_country = "NL"').replace('wifi_ssid = ""', 'wifi_ssid = "x"')
    (root / "boot/firmware/edge.toml").write_text(text.replace('wifi_key = ""', 'wifi_key = "passphrase1"'))
    run_firstboot(fb)
    assert not (root / "var/lib/edge/config-error.txt").exists()

    def card():
        return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_ino) for p in root.rglob("*")
                if not str(p.relative_to(root)).startswith("run")}

    before = card()
    reboot(root)
    run_firstboot(fb)
    assert card() == before
    assert (root / "run/edge/wpa_supplicant-wlan0.conf").exists()  # /run filled again


def test_no_data_partition_is_not_grown_and_tried_again_next_boot(tmp_path, monkeypatch, capsys):
    fb, root = load_firstboot(tmp_path, monkeypatch)
    fb.expand_data()  # EDGE_DATA is a plain folder here, not a mount point
    assert "no data partition mounted" in capsys.readouterr().out
    assert not fb.EXPANDED_MARK.exists()


UPDATE_AGENT = IMAGE / "update-agent.sh"


@pytest.mark.skipif(os.geteuid() != 0, reason="edge-update-agent runs as root")
@pytest.mark.parametrize("cut", ["during the install", "during the restore", "before the mark"])
def test_an_interrupted_update_is_undone_at_the_next_run(tmp_path, cut):
    """A power cut leaves the venv half-changed: the next run (edge-firstboot runs --recover at boot) puts the copy
    from before the update back; without the mark nothing is touched."""
    venv, previous, etc = tmp_path / "venv", tmp_path / "venv.previous", tmp_path / "etc"
    etc.mkdir()
    previous.mkdir()
    (previous / "good").write_text("the agent before the update")
    if cut != "during the restore":
        venv.mkdir()
        (venv / "half").write_text("half-installed")
    if cut != "before the mark":
        (etc / ".agent-update-in-progress").write_text("")
    env = dict(os.environ, EDGE_VENV=str(venv), EDGE_CONFIG=str(etc / "edge.toml"))
    result = subprocess.run(["sh", str(UPDATE_AGENT), "--recover", "--no-restart"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    if cut == "before the mark":
        assert (venv / "half").exists() and previous.exists() and result.stdout == ""
    else:
        assert (venv / "good").exists() and not (venv / "half").exists()
        assert not previous.exists() and not (etc / ".agent-update-in-progress").exists()
        assert "interrupted" in result.stdout
