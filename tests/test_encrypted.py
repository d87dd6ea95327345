"""Encrypted P1 (DLMS general-global-cipher, AES-128-GCM): Luxembourg Smarty/MSN, Austrian Sagemcom T210-D-r.

Our frame builder is checked against two independent implementations (dsmr_parser decrypts what it
builds; dlms_cosem's `encrypt` gives the same bytes), then every encrypted telegram must decode to
exactly what its plaintext decodes to, through the decoder, a real pseudo-terminal and the running agent.

dsmr_parser's own test suite has no captured encrypted frame with its key (its encrypted tests build
frames with dummy keys, as these do), so there is no real-meter sample to replay here.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from dlms_cosem.security import SecurityControlField, encrypt
from dsmr_parser import telegram_specifications as specs
from dsmr_parser.clients.telegram_buffer import EncryptedTelegramBuffer
from dsmr_parser.exceptions import DecryptionError
from dsmr_parser.parsers import TelegramParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers import dlms
from drivers import telegram as telegram_module
from drivers.emulator import TelegramGenerator
from drivers.p1_reader import MeterSpec, MeterState, P1Reader
from drivers.profiles import PROFILES, get_profile
from drivers.telegram import DecryptError, TelegramDecoder, crc16
from tests.helpers.agent import make_config
from tests.helpers.p1 import Collector
from tests.helpers.pty import PtyPair
from tests.helpers.telegrams import telegram_bytes
from tests.helpers.wait import wait_until

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
KEY_HEX = "6B3F1E2D4C5A69788796A5B4C3D2E1F0"
AUTH_HEX = "0F1E2D3C4B5A69788796A5B4C3D2E1F0"
SMARTY_AUTH_HEX = "00112233445566778899AABBCCDDEEFF"  # published in the Luxmetering P1 specification
KEY, AUTH, SMARTY_AUTH = (bytes.fromhex(k) for k in (KEY_HEX, AUTH_HEX, SMARTY_AUTH_HEX))
OTHER_KEY = bytes.fromhex("00" * 15 + "01")
TITLE = b"SAG\x01\x02\x03\x04\x05"

SAGEMCOM = telegram_bytes("sagemcom_t210_d_r.txt")  # the decrypted telegram of a real T210-D-r


def _smarty_telegram() -> bytes:
    """A Smarty-style telegram (DSMR 5 plus 0-0:42.0.0 and the 1.8.0/2.8.0 totals), made up, valid CRC."""
    lines = [
        "/Lux5\\253833635_D", "", "1-3:0.2.8(42)", "0-0:1.0.0(261122130000W)",
        "0-0:42.0.0(4544474554455354534D415254593031)",  # "EDGETESTSMARTY01" in hex
        "1-0:1.8.0(001234.567*kWh)", "1-0:2.8.0(000456.789*kWh)", "1-0:3.8.0(000012.345*kvarh)",
        "1-0:4.8.0(000123.456*kvarh)", "1-0:1.7.0(00.512*kW)", "1-0:2.7.0(00.000*kW)",
        "1-0:3.7.0(00.010*kvar)", "1-0:4.7.0(00.140*kvar)", "0-0:96.7.21(00003)", "1-0:32.32.0(00001)",
        "1-0:32.36.0(00000)", "0-0:96.13.0()", "1-0:32.7.0(231.2*V)", "1-0:31.7.0(002*A)",
        "1-0:21.7.0(00.512*kW)", "1-0:22.7.0(00.000*kW)",
    ]
    body = ("\r\n".join(lines) + "\r\n!").encode("ascii")
    return body + f"{crc16(body):04X}\r\n".encode("ascii")


SMARTY = _smarty_telegram()


def frame(plaintext: bytes, key: bytes = KEY, auth: bytes = AUTH, counter: int = 0x10000001) -> bytes:
    return dlms.encrypt_frame(plaintext, key, auth, TITLE, counter)


def decoder(profile: str, key: bytes | None = KEY, auth: bytes | None = AUTH, **kwargs) -> TelegramDecoder:
    """A decoder whose monotonic clock stands still (no partial frame ever goes stale by itself): tests about
    timing pass `now` to `feed` or a clock of their own."""
    kwargs.setdefault("clock", lambda: 0.0)
    return TelegramDecoder("m", get_profile(profile), decryption_key=key, authentication_key=auth, **kwargs)


def plain_reading(profile: str, telegram: bytes):
    return TelegramDecoder("m", get_profile(profile)).decode(telegram.decode("ascii"), NOW)


# --- the frame builder against dsmr_parser and dlms_cosem ---------------------------------------
def test_frame_layout():
    data = frame(SAGEMCOM)
    assert data[0] == 0xDB and data[1] == 8 and data[2:10] == TITLE and data[10] == 0x82
    assert int.from_bytes(data[11:13], "big") == len(data) - 13 == 1 + 4 + len(SAGEMCOM) + 12
    assert data[13] == 0x30 and data[14:18] == bytes.fromhex("10000001")


def test_same_bytes_as_dlms_cosem():
    """dlms_cosem (dsmr_parser's dependency) is an independent AES-GCM/DLMS implementation."""
    sealed = encrypt(security_control=SecurityControlField(security_suite=0, authenticated=True, encrypted=True),
                     key=KEY, auth_key=AUTH, system_title=TITLE, invocation_counter=0x10000001, plain_text=SAGEMCOM)
    assert frame(SAGEMCOM)[18:] == sealed


@pytest.mark.parametrize("auth", [AUTH_HEX, None], ids=["tag-verified", "unverified"])
def test_dsmr_parser_decrypts_our_frames(auth):
    parser = TelegramParser(specs.SAGEMCOM_T210_D_R)
    ours = parser.parse(frame(SAGEMCOM).hex(), KEY_HEX, auth)
    plain = TelegramParser(dict(specs.SAGEMCOM_T210_D_R, general_global_cipher=False)).parse(SAGEMCOM.decode())
    assert len(ours) == len(plain) == 18
    assert [(name, obj.value, obj.unit) for name, obj in ours] == [(name, obj.value, obj.unit) for name, obj in plain]


def test_dsmr_parser_rejects_our_frames_with_another_key():
    parser = TelegramParser(specs.SAGEMCOM_T210_D_R)
    with pytest.raises(DecryptionError):
        parser.parse(frame(SAGEMCOM).hex(), KEY_HEX, SMARTY_AUTH_HEX)
    with pytest.raises(DecryptionError):
        parser.parse(frame(SAGEMCOM).hex(), OTHER_KEY.hex(), None)


def test_msn_frames_with_the_published_authentication_key():
    """dsmr_parser's MSN specification verifies with the Luxmetering key when given no other."""
    result = TelegramParser(specs.MSN).parse(frame(SMARTY, auth=SMARTY_AUTH).hex(), KEY_HEX)
    assert str(result.ELECTRICITY_IMPORTED_TOTAL.value) == "1234.567"


def test_dsmr_parser_frames_our_frames():
    buffer = EncryptedTelegramBuffer()
    stream = b"\x00noise" + frame(SAGEMCOM, counter=1) + frame(SMARTY, counter=2)
    for i in range(0, len(stream), 37):
        buffer.append(stream[i : i + 37])
    assert [bytes.fromhex(f) for f in buffer.get_all()] == [frame(SAGEMCOM, counter=1), frame(SMARTY, counter=2)]


def test_our_decryption_opens_dlms_cosem_frames_and_checks_the_tag():
    data = frame(SAGEMCOM)
    assert dlms.decrypt_frame(data, KEY, AUTH) == SAGEMCOM == dlms.decrypt_frame(data, KEY, None)
    with pytest.raises(dlms.DlmsError):
        dlms.decrypt_frame(data, KEY, SMARTY_AUTH)
    tampered = bytearray(data)
    tampered[-1] ^= 0x01  # only the tag
    with pytest.raises(dlms.DlmsError):
        dlms.decrypt_frame(bytes(tampered), KEY, AUTH)
    assert dlms.decrypt_frame(bytes(tampered), KEY, None) == SAGEMCOM  # unverified: the tag is not looked at


def test_parse_key():
    assert dlms.parse_key(KEY_HEX.lower()) == KEY
    for bad in ("", KEY_HEX[:-2], KEY_HEX + "00", "zz" * 16):
        with pytest.raises(ValueError) as info:
            dlms.parse_key(bad)
        assert bad not in str(info.value) or not bad


# --- the decoder: the encrypted telegram is the plaintext telegram ----------------------------
@pytest.mark.parametrize("profile, telegram", [
    ("sagemcom_t210_d_r", SAGEMCOM), ("smarty", SMARTY), ("msn", SMARTY),
], ids=["sagemcom", "smarty", "msn"])


@pytest.mark.parametrize("auth", ["with-auth", "without-auth"])
def test_encrypted_decodes_exactly_like_plaintext(profile, telegram, auth):
    auth_key = SMARTY_AUTH if profile != "sagemcom_t210_d_r" else AUTH
    dec = decoder(profile, KEY, auth_key if auth == "with-auth" else None)
    readings, errors = dec.feed(frame(telegram, auth=auth_key), NOW)
    assert errors == [] and len(readings) == 1
    assert readings[0] == plain_reading(profile, telegram)
    assert dec.stats.telegrams_ok == 1 and dec.stats.decrypt_errors == dec.stats.bytes_discarded == 0


def test_smarty_values():
    reading = decoder("smarty", KEY, SMARTY_AUTH).feed(frame(SMARTY, auth=SMARTY_AUTH), NOW)[0][0]
    assert reading.energy_import_wh == 1_234_567 and reading.energy_export_wh == 456_789
    assert reading.power_import_w == 512 and reading.voltage_l1_v == pytest.approx(231.2)


def test_sagemcom_values():
    reading = decoder("sagemcom_t210_d_r").feed(frame(SAGEMCOM), NOW)[0][0]
    assert reading.energy_import_wh == 6_545_766 and reading.power_import_w == 286


def test_byte_by_byte_and_many_frames_in_one_read():
    frames = [frame(SAGEMCOM, counter=n) for n in range(5)]
    dec = decoder("sagemcom_t210_d_r")
    got = []
    for byte in b"".join(frames[:2]):
        got += dec.feed(bytes([byte]), NOW)[0]
    got += dec.feed(b"".join(frames[2:]), NOW)[0]
    assert len(got) == 5 and dec.stats.telegrams_ok == 5 and dec.stats.bytes_discarded == 0


def test_emulated_dsmr5_meter_encrypted_reads_as_smarty():
    """`emulate-meter --profile dsmr5 --encrypt-key` is read with profile smarty and the key."""
    generator = TelegramGenerator("dsmr5", seed=3)
    encryptor = dlms.FrameEncryptor(KEY, SMARTY_AUTH)
    dec = decoder("smarty", KEY, None)
    for n in range(5):
        telegram = generator.next_telegram(NOW.replace(second=n))
        readings, errors = dec.feed(encryptor(telegram), NOW)
        assert errors == [] and readings == [plain_reading("dsmr5", telegram)]
    assert encryptor.invocation_counter == 6 and KEY_HEX not in repr(encryptor)


def test_emulate_meter_cli_encrypts(tmp_path):
    result = subprocess.run([sys.executable, "-m", "agent.cli", "emulate-meter", "--stdout", "--count", "3",
                             "--speed", "1000", "--seed", "5", "--encrypt-key", KEY_HEX, "--auth-key", AUTH_HEX],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    readings, errors = decoder("smarty", KEY, AUTH).feed(result.stdout, NOW)
    assert errors == [] and len(readings) == 3
    bad = subprocess.run([sys.executable, "-m", "agent.cli", "emulate-meter", "--stdout", "--count", "1",
                          "--encrypt-key", "123"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "32 hex digits" in bad.stderr


# --- what goes wrong: wrong keys, corruption, garbage -----------------------------------------
@pytest.mark.parametrize("key, auth", [(OTHER_KEY, AUTH), (KEY, SMARTY_AUTH), (OTHER_KEY, None)],
                         ids=["wrong-key", "wrong-auth-key", "wrong-key-unverified"])


def test_wrong_key_is_counted_and_reads_nothing(key, auth):
    dec = decoder("sagemcom_t210_d_r", key, auth)
    for n in range(3):
        readings, errors = dec.feed(frame(SAGEMCOM, counter=n), NOW)
        assert readings == [] and len(errors) == 1 and isinstance(errors[0], DecryptError)
    assert dec.stats.decrypt_errors == 3 and dec.stats.telegrams_ok == dec.stats.crc_errors == 0
    for secret in (KEY_HEX, AUTH_HEX, SMARTY_AUTH_HEX, OTHER_KEY.hex()):
        assert secret.lower() not in dec.stats.last_error.lower()


def test_corrupted_ciphertext():
    """With the tag verified a flipped bit fails decryption; unverified, the telegram's CRC catches it."""
    damaged = bytearray(frame(SAGEMCOM))
    damaged[18 + 200] ^= 0x04  # inside the ciphertext, mid-telegram
    for auth, counter in ((AUTH, "decrypt_errors"), (None, "crc_errors")):
        dec = decoder("sagemcom_t210_d_r", KEY, auth)
        readings, errors = dec.feed(bytes(damaged) + frame(SAGEMCOM), NOW)
        assert len(readings) == 1 and len(errors) == 1  # the next frame is read
        assert getattr(dec.stats, counter) == 1 and dec.stats.telegrams_ok == 1


def test_unverified_plaintext_needs_its_crc():
    no_crc = SAGEMCOM[: SAGEMCOM.rindex(b"!") + 1] + b"\r\n"
    dec = decoder("sagemcom_t210_d_r", KEY, None)
    readings, errors = dec.feed(frame(no_crc), NOW)
    assert readings == [] and dec.stats.parse_errors == 1 and "CRC" in dec.stats.last_error


def test_lost_byte_costs_one_telegram_not_two():
    """A byte lost on the line makes the header claim one byte of the next frame: that frame is recovered."""
    first = frame(SAGEMCOM, counter=1)
    stream = first[:100] + first[101:] + frame(SAGEMCOM, counter=2) + frame(SAGEMCOM, counter=3)
    for auth in (AUTH, None):
        dec = decoder("sagemcom_t210_d_r", KEY, auth)
        readings, errors = dec.feed(stream, NOW)
        assert len(readings) == 2 and dec.stats.decrypt_errors == 1


def test_corrupted_header():
    damaged = bytearray(frame(SAGEMCOM, counter=1))
    damaged[1] = 9  # system title length
    dec = decoder("sagemcom_t210_d_r")
    readings, _ = dec.feed(bytes(damaged) + frame(SAGEMCOM, counter=2), NOW)
    assert len(readings) == 1 and dec.stats.bytes_discarded == len(damaged)
    damaged = bytearray(frame(SAGEMCOM, counter=1))
    damaged[12] ^= 0x10  # the length: the frame now ends inside the next one
    dec = decoder("sagemcom_t210_d_r")
    readings, _ = dec.feed(bytes(damaged) + frame(SAGEMCOM, counter=2) + frame(SAGEMCOM, counter=3), NOW)
    assert len(readings) == 2 and dec.stats.decrypt_errors == 1


def _length_damaged_upwards() -> bytes:
    damaged = bytearray(frame(SAGEMCOM, counter=1))
    damaged[11] ^= 0x20  # the header now claims 8192 more bytes than the meter sends
    return bytes(damaged)


def test_a_length_damaged_upwards_does_not_hold_up_the_next_telegrams():
    """A flipped high bit makes a header claim kilobytes; the next frame, after the meter's pause, is read
    at once instead of waiting for those kilobytes to arrive."""
    damaged = _length_damaged_upwards()
    for auth in (AUTH, None):
        dec = decoder("sagemcom_t210_d_r", KEY, auth)
        assert dec.feed(damaged, NOW, now=100.0) == ([], [])
        assert dec.feed(frame(SAGEMCOM, counter=2)[:100], NOW, now=105.0) == ([], [])
        readings, _ = dec.feed(frame(SAGEMCOM, counter=2)[100:], NOW, now=105.05)
        assert len(readings) == 1 and dec.stats.parse_errors == 1 and dec.stats.decrypt_errors == 0
        assert dec.stats.bytes_discarded == len(damaged)


# --- the wall clock steps (NTP on a Pi without an RTC), the buffer's timer does not -------------
YEARS_LATER = NOW + timedelta(days=5 * 365)  # the first NTP sync after booting at the image's build date
A_DAY_EARLIER = NOW - timedelta(days=1)


@pytest.mark.parametrize("auth", [AUTH, None], ids=["with-auth", "without-auth"])
@pytest.mark.parametrize("stepped_to", [YEARS_LATER, A_DAY_EARLIER], ids=["forward", "back"])
def test_a_wall_clock_step_inside_a_frame_neither_drops_nor_holds_it(auth, stepped_to):
    """The frame arrives in two reads 50 ms apart; between them NTP steps the wall clock. It is read, at
    once, and the reading carries the (new) wall-clock time it was received at."""
    dec = decoder("sagemcom_t210_d_r", KEY, auth)
    data = frame(SAGEMCOM, counter=2)
    assert dec.feed(data[:100], NOW, now=1000.0) == ([], [])
    readings, errors = dec.feed(data[100:], stepped_to, now=1000.05)
    assert errors == [] and len(readings) == 1 and readings[0].received_at == stepped_to
    assert dec.stats.parse_errors == dec.stats.frames_truncated == dec.stats.bytes_discarded == 0
    assert dec._buffer.pending == 0


@pytest.mark.parametrize("auth", [AUTH, None], ids=["with-auth", "without-auth"])
@pytest.mark.parametrize("stepped_to", [YEARS_LATER, A_DAY_EARLIER, NOW], ids=["forward", "back", "no-step"])
def test_a_stale_partial_frame_is_dropped_whatever_the_wall_clock_does(auth, stepped_to):
    """A damaged length keeps a frame incomplete; 5 s later (monotonic) the next frame comes: the stale one
    is given up and the next one read, even when the wall clock went back meanwhile (it must not hold it)."""
    dec = decoder("sagemcom_t210_d_r", KEY, auth)
    damaged = _length_damaged_upwards()
    assert dec.feed(damaged, NOW, now=1000.0) == ([], [])
    readings, errors = dec.feed(frame(SAGEMCOM, counter=2), stepped_to, now=1005.0)
    assert len(readings) == 1 and readings[0].received_at == stepped_to
    assert dec.stats.frames_truncated == dec.stats.parse_errors == 1 and dec.stats.decrypt_errors == 0
    assert dec.stats.bytes_discarded == len(damaged)


def test_with_the_real_monotonic_clock_only_a_genuinely_stale_frame_is_dropped(monkeypatch):
    """The decoder's own clock (time.monotonic), a fake wall clock stepped by years: a frame split across
    the step is read; a partial frame left alone longer than STALE_FRAME_S is given up."""
    monkeypatch.setattr(telegram_module, "STALE_FRAME_S", 0.2)  # so the test waits 0.3 s, not 3
    dec = TelegramDecoder("m", get_profile("sagemcom_t210_d_r"), decryption_key=KEY, authentication_key=AUTH)
    assert dec.clock is time.monotonic
    data = frame(SAGEMCOM, counter=2)
    assert dec.feed(data[:100], NOW) == ([], [])
    readings, _ = dec.feed(data[100:], YEARS_LATER)
    assert [r.received_at for r in readings] == [YEARS_LATER] and dec.stats.parse_errors == 0

    damaged = _length_damaged_upwards()
    assert dec.feed(damaged, YEARS_LATER) == ([], [])
    time.sleep(0.3)  # at least that long on the monotonic clock: the partial frame is now stale
    readings, _ = dec.feed(frame(SAGEMCOM, counter=3), NOW)  # and the wall clock went back by years
    assert len(readings) == 1 and dec.stats.frames_truncated == 1 and dec.stats.bytes_discarded == len(damaged)


def test_garbage_between_frames():
    garbage = [b"\xff\x00 noise \r\n", b"\xdb", b"\xdb\x08", b"\xdb\x07" + b"x" * 20, b"/ISK5 not encrypted!1234\r\n",
               b"\xdb\x08" + TITLE + b"\x81\x00\x10" + b"z" * 16]
    stream = b"".join(g + frame(SAGEMCOM, counter=n) for n, g in enumerate(garbage)) + b"tail"
    dec = decoder("sagemcom_t210_d_r")
    got = []
    for i in range(0, len(stream), 64):
        got += dec.feed(stream[i : i + 64], NOW)[0]
    assert len(got) == len(garbage) and dec.stats.decrypt_errors == 0
    assert dec.stats.bytes_discarded == sum(map(len, garbage)) + len(b"tail")


def test_a_plaintext_meter_with_a_key_configured_reads_nothing():
    dec = decoder("smarty", KEY, None)
    readings, errors = dec.feed(SMARTY * 3, NOW)
    assert readings == errors == [] and dec.stats.bytes_discarded == 3 * len(SMARTY)


def test_buffer_stays_bounded():
    dec = decoder("sagemcom_t210_d_r", max_buffer=2048)
    # a plausible header claiming more than the cap is not believed
    dec.feed(b"\xdb\x08" + TITLE + b"\x82\xff\xf0\x30" + b"\x00" * 5000, NOW)
    assert dec._buffer.pending <= 2048
    assert dec.feed(frame(SAGEMCOM), NOW)[0]


def test_keys_only_for_profiles_that_take_them():
    assert {name for name, p in PROFILES.items() if p.takes_key} == {"smarty", "msn", "sagemcom_t210_d_r"}
    with pytest.raises(ValueError):
        TelegramDecoder("m", get_profile("dsmr5"), decryption_key=KEY)
    with pytest.raises(ValueError):
        TelegramDecoder("m", get_profile("smarty"), authentication_key=AUTH)
    with pytest.raises(ValueError):
        P1Reader(MeterSpec("m", "/dev/null", "auto", decryption_key=KEY), lambda r: None)
    assert KEY_HEX.lower() not in repr(decoder("smarty")).lower()
    assert KEY_HEX.lower() not in repr(MeterSpec("m", "/dev/null", "smarty", decryption_key=KEY)).lower()


def test_without_a_key_encrypted_profiles_still_read_plaintext():
    for profile, telegram in (("sagemcom_t210_d_r", SAGEMCOM), ("smarty", SMARTY), ("msn", SMARTY)):
        dec = TelegramDecoder("m", get_profile(profile))
        assert len(dec.feed(telegram, NOW)[0]) == 1


# --- fuzzing: the encrypted framing never raises -------------------------------------------------
_FRAMES = [frame(SAGEMCOM, counter=n) for n in range(3)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.binary(max_size=300), st.floats(0, 10)), max_size=20), st.sampled_from([AUTH, None]))
def test_fuzz_random_bytes_never_raise(chunks, auth):
    """Noise, and noise behind a plausible header start, at any pace: nothing raises, the buffer stays capped,
    and a frame afterwards is still read."""
    dec = decoder("sagemcom_t210_d_r", KEY, auth, max_buffer=4096)
    moment = 0.0  # monotonic seconds
    for chunk, pause in chunks:
        moment += pause
        dec.feed(b"\xdb\x08" + TITLE + b"\x82" + chunk if len(chunk) % 3 == 0 else chunk, NOW, now=moment)
        assert dec._buffer.pending <= 4096
    readings = []
    for n in range(1, 25):  # each pause gives up one stale (noise) header that could swallow the frame
        readings += dec.feed(frame(SAGEMCOM, counter=n), NOW, now=moment + 5 * n)[0]
        if readings:
            break
    assert readings


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["flip", "drop", "insert"]), st.integers(0, 3 * 520),
                          st.integers(0, 255)), max_size=6),
       st.integers(1, 700), st.sampled_from([AUTH, None]))


def test_fuzz_damaged_stream_never_raises_and_every_intact_frame_is_read(edits, chunk, auth):
    """Bits flipped, bytes lost or added anywhere: no exception, and every frame no edit touched is read
    once enough data follows (a damaged header never costs the frames after it)."""
    stream = bytearray(b"".join(_FRAMES))
    size = len(_FRAMES[0])
    touched = set()
    for kind, position, value in sorted(edits, key=lambda e: -e[1]):  # from the end: positions stay valid
        position = min(position, len(stream) - 1)
        touched.add(position // size)
        if kind == "flip":
            stream[position] ^= value or 1
        elif kind == "drop":
            del stream[position]
        else:
            stream.insert(position, value)
    trailing = [frame(SAGEMCOM, counter=100 + n) for n in range(5)]  # more than max_buffer after the damage
    dec = decoder("sagemcom_t210_d_r", KEY, auth, max_buffer=2048)
    readings = []
    data = bytes(stream) + b"".join(trailing)
    for i in range(0, len(data), chunk):
        readings += dec.feed(data[i : i + chunk], NOW)[0]
    assert len(readings) == dec.stats.telegrams_ok
    assert 3 - len(touched) + len(trailing) <= len(readings) <= 3 + len(trailing)
    assert all(r == plain_reading("sagemcom_t210_d_r", SAGEMCOM) for r in readings)


# --- through a real pseudo-terminal, a P1Reader and the running agent ---------------------------
@pytest.fixture
def reader_on(pty_pair):
    started = []

    def start(spec):
        got = Collector()
        reader = P1Reader(spec, got, read_timeout=0.05, max_backoff=0.5)
        reader.start()
        started.append(reader)
        wait_until(lambda: reader.opens >= 1)
        return reader, got

    yield start
    for reader in started:
        reader.stop()


@pytest.mark.parametrize("auth", [AUTH, None], ids=["with-auth", "without-auth"])
def test_pty_reader_reads_encrypted_frames(pty_pair, reader_on, auth):
    reader, got = reader_on(MeterSpec("lux", pty_pair.path, "sagemcom_t210_d_r", decryption_key=KEY,
                                      authentication_key=auth))
    stream = b"".join(b"\x00\xdbjunk" + frame(SAGEMCOM, counter=n) for n in range(3))
    for i in range(0, len(stream), 50):
        pty_pair.write(stream[i : i + 50])
        time.sleep(0.002)
    got.wait_for(3)
    plain = plain_reading("sagemcom_t210_d_r", SAGEMCOM)
    assert all(r == replace(plain, meter_id="lux", received_at=r.received_at) for r in got.readings)
    snap = reader.snapshot()
    assert reader.state == MeterState.READING and snap["telegrams_ok"] == 3 and snap["decrypt_errors"] == 0


class WallClock:
    """The reader's wall clock, stepped by the test as NTP steps a Pi's clock."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_pty_reader_wall_clock_step_neither_drops_nor_holds_a_frame(pty_pair, monkeypatch):
    """Through a real pseudo-terminal and P1Reader (real time.monotonic): half a frame, the wall clock
    jumps years ahead, the other half: read, stamped with the new time. Then a damaged frame left stale
    and the wall clock stepped back by years: the stale frame is given up, the next one read."""
    monkeypatch.setattr(telegram_module, "STALE_FRAME_S", 0.3)
    wall = WallClock(NOW)
    got = Collector()
    reader = P1Reader(MeterSpec("lux", pty_pair.path, "sagemcom_t210_d_r", decryption_key=KEY,
                                authentication_key=AUTH), got, read_timeout=0.05, max_backoff=0.5,
                      wall_clock=wall)
    reader.start()
    try:
        wait_until(lambda: reader.opens >= 1)
        time.sleep(0.2)  # pyserial flushes its input just after opening
        data = frame(SAGEMCOM, counter=1)
        pty_pair.write(data[:200])
        wait_until(lambda: reader.bytes_read >= 200)
        wall.now = YEARS_LATER
        pty_pair.write(data[200:])
        got.wait_for(1)
        assert got.readings[0].received_at == YEARS_LATER and reader.stats.parse_errors == 0

        damaged = _length_damaged_upwards()
        pty_pair.write(damaged)
        wait_until(lambda: reader.bytes_read >= len(data) + len(damaged))
        time.sleep(0.5)  # longer than STALE_FRAME_S on the monotonic clock
        wall.now = NOW - timedelta(days=3 * 365)
        pty_pair.write(frame(SAGEMCOM, counter=2))
        got.wait_for(2)
        assert got.readings[1].received_at == wall.now
        assert reader.stats.frames_truncated == 1 and reader.stats.decrypt_errors == 0
        assert reader.state == MeterState.READING and reader.stalls == 0
    finally:
        reader.stop()


def test_pty_reader_with_a_wrong_key_keeps_running(pty_pair, reader_on, caplog):
    caplog.set_level(logging.DEBUG)
    reader, got = reader_on(MeterSpec("lux", pty_pair.path, "sagemcom_t210_d_r", decryption_key=OTHER_KEY,
                                      authentication_key=AUTH))
    for n in range(3):
        pty_pair.write(frame(SAGEMCOM, counter=n))
    wait_until(lambda: reader.stats.decrypt_errors >= 3)
    assert got.readings == [] and reader.state == MeterState.CONNECTING and reader._thread.is_alive()
    assert "decrypt" in reader.snapshot()["last_error"]
    logged = caplog.text.lower()
    assert "cannot decrypt" in logged
    assert logged.count("dropped a telegram") == 1  # rate-limited
    for secret in (OTHER_KEY.hex(), AUTH_HEX.lower(), KEY_HEX.lower()):
        assert secret not in logged


async def test_agent_shows_decrypt_errors_and_never_the_keys(tmp_path, start_agent):
    good, bad = PtyPair(), PtyPair()
    meters = [MeterSpec("good", good.path, "smarty", decryption_key=KEY, authentication_key=SMARTY_AUTH),
              MeterSpec("bad", bad.path, "msn", decryption_key=OTHER_KEY)]
    try:
        running = await start_agent(make_config(tmp_path, meters))
        readers = running.agent.readers
        await running.wait_for(lambda: all(r.opens >= 1 for r in readers.values()))
        for n in range(2):
            good.write(frame(SMARTY, auth=SMARTY_AUTH, counter=n))
            bad.write(frame(SMARTY, auth=SMARTY_AUTH, counter=n))
        await running.wait_for(lambda: readers["good"].stats.telegrams_ok == 2
                               and readers["bad"].stats.decrypt_errors == 2)
        status, latest = await running.get("/meters/good/latest")
        assert status == 200 and latest["energy_import_wh"] == 1_234_567
        status, health = await running.get("/health")  # the detail is the operator's
        assert status == 503 and health["meters"]["bad"]["decrypt_errors"] == 2
        assert health["meters"]["good"]["decrypt_errors"] == 0 and health["meters"]["good"]["state"] == "reading"
        status, metrics = await running.get("/metrics")
        assert 'edge_meter_decrypt_errors_total{meter="bad"} 2' in metrics
        status, listing = await running.get("/meters")
        assert status == 200
        for text in (str(health), metrics, str(listing)):
            for secret in (KEY_HEX, OTHER_KEY.hex(), SMARTY_AUTH_HEX):
                assert secret.lower() not in text.lower()
    finally:
        good.close()
        bad.close()
