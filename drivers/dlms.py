"""DLMS general-global-cipher APDUs: the AES-128-GCM frames encrypted P1 ports send.

Luxembourg Smarty/MSN and Austrian Sagemcom T210-D-r meters wrap each plaintext telegram in:

    0xDB | 0x08 | system title (8) | 0x82 | length (2, big endian)
         | security control (1) | invocation counter (4, big endian) | ciphertext | GCM tag (12)

`length` counts everything after it. The security control byte is 0x30 (suite 0, authenticated and
encrypted); IV = system title + invocation counter; AAD = security control byte + authentication key.

`encrypt_frame` builds such a frame (tests and the emulator), `decrypt_frame` opens one, with the GCM
tag verified when an authentication key is given, or as plain AES-CTR without one (what ESPHome does
for Smarty meters, whose authentication key owners do not get); then the telegram's CRC is the only
integrity check, so the caller must insist on it. No I/O here, and no key ever goes into a message.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

GENERAL_GLOBAL_CIPHER_TAG = 0xDB
SYSTEM_TITLE_LENGTH = 8
LONG_FORM_LENGTH = 0x82  # two length bytes follow
HEADER_LENGTH = 2 + SYSTEM_TITLE_LENGTH + 1 + 2  # up to and including the length field
SECURITY_CONTROL = 0x30  # security suite 0, authenticated, encrypted
GCM_TAG_LENGTH = 12
KEY_LENGTH = 16
MAX_CONTENT = 0xFFFF  # the two-byte length field

_AUTHENTICATED = 0x10
_ENCRYPTED = 0x20


class DlmsError(ValueError):
    """A frame that cannot be decrypted: malformed, unsupported, wrong key or a failed tag."""


def parse_key(text: str) -> bytes:
    """A 16-byte key from 32 hex digits. The message of the ValueError never includes the text."""
    if not isinstance(text, str) or len(text) != 2 * KEY_LENGTH:
        raise ValueError(f"must be {2 * KEY_LENGTH} hex digits ({KEY_LENGTH} bytes)")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"must be {2 * KEY_LENGTH} hex digits (0-9, A-F)") from None


def security_control_supported(byte: int) -> bool:
    """Suite 0, encrypted, with or without authentication; no compression, no broadcast key."""
    return byte & ~_AUTHENTICATED & 0xFF == _ENCRYPTED


@dataclass(frozen=True, slots=True)
class CipheredApdu:
    system_title: bytes
    security_control: int
    invocation_counter: int
    ciphertext: bytes
    tag: bytes  # empty when the security control byte says "not authenticated"

    @property
    def iv(self) -> bytes:
        return self.system_title + self.invocation_counter.to_bytes(4, "big")


def parse_frame(frame: bytes) -> CipheredApdu:
    """Split one complete frame into its parts; DlmsError when it is not one we can open."""
    if len(frame) < HEADER_LENGTH + 5 or frame[0] != GENERAL_GLOBAL_CIPHER_TAG:
        raise DlmsError("not a general-global-cipher frame")
    if frame[1] != SYSTEM_TITLE_LENGTH:
        raise DlmsError(f"system title of {frame[1]} bytes, expected {SYSTEM_TITLE_LENGTH}")
    if frame[2 + SYSTEM_TITLE_LENGTH] != LONG_FORM_LENGTH:
        raise DlmsError("unsupported length encoding")
    length = int.from_bytes(frame[HEADER_LENGTH - 2 : HEADER_LENGTH], "big")
    if len(frame) != HEADER_LENGTH + length:
        raise DlmsError(f"frame of {len(frame)} bytes, its header says {HEADER_LENGTH + length}")
    control = frame[HEADER_LENGTH]
    if not security_control_supported(control):
        raise DlmsError(f"unsupported security control byte 0x{control:02X}")
    body = frame[HEADER_LENGTH + 5 :]
    tag_length = GCM_TAG_LENGTH if control & _AUTHENTICATED else 0
    if len(body) <= tag_length:
        raise DlmsError("no ciphertext")
    return CipheredApdu(system_title=bytes(frame[2 : 2 + SYSTEM_TITLE_LENGTH]), security_control=control,
                        invocation_counter=int.from_bytes(frame[HEADER_LENGTH + 1 : HEADER_LENGTH + 5], "big"),
                        ciphertext=bytes(body[: len(body) - tag_length]), tag=bytes(body[len(body) - tag_length :]))


def decrypt_frame(frame: bytes, key: bytes, authentication_key: bytes | None = None) -> bytes:
    """The plaintext inside `frame`. With `authentication_key`, the GCM tag must verify; without it,
    the frame is decrypted unverified and the caller must check the plaintext (the telegram CRC)."""
    apdu = parse_frame(frame)
    if authentication_key is None:
        # GCM encrypts with AES-CTR starting at inc32(J0), J0 = IV || 00000001 for a 96-bit IV.
        decryptor = Cipher(algorithms.AES(key), modes.CTR(apdu.iv + (2).to_bytes(4, "big"))).decryptor()
        return decryptor.update(apdu.ciphertext) + decryptor.finalize()
    if not apdu.tag:
        raise DlmsError("frame is not authenticated, but an authentication key is configured")
    decryptor = Cipher(algorithms.AES(key), modes.GCM(apdu.iv, apdu.tag, min_tag_length=GCM_TAG_LENGTH)).decryptor()
    decryptor.authenticate_additional_data(bytes([apdu.security_control]) + authentication_key)
    try:
        return decryptor.update(apdu.ciphertext) + decryptor.finalize()
    except InvalidTag:
        raise DlmsError("authentication tag does not verify: wrong key or corrupted frame") from None


def encrypt_frame(plaintext: bytes, key: bytes, authentication_key: bytes, system_title: bytes,
                  invocation_counter: int) -> bytes:
    """A general-global-cipher frame (security control 0x30) carrying `plaintext`, as a meter sends it."""
    if len(key) != KEY_LENGTH or len(authentication_key) != KEY_LENGTH:
        raise ValueError(f"keys are {KEY_LENGTH} bytes")
    if len(system_title) != SYSTEM_TITLE_LENGTH:
        raise ValueError(f"the system title is {SYSTEM_TITLE_LENGTH} bytes")
    if not 0 <= invocation_counter < 2**32:
        raise ValueError("the invocation counter is 4 bytes")
    counter = invocation_counter.to_bytes(4, "big")
    aad = bytes([SECURITY_CONTROL]) + authentication_key
    sealed = AESGCM(key).encrypt(system_title + counter, plaintext, aad)  # ciphertext + 16-byte tag
    sealed = sealed[: len(plaintext) + GCM_TAG_LENGTH]  # DLMS sends the tag truncated to 12 bytes
    length = 1 + 4 + len(sealed)
    if length > MAX_CONTENT:
        raise ValueError("plaintext too long for one frame")
    return (bytes([GENERAL_GLOBAL_CIPHER_TAG, SYSTEM_TITLE_LENGTH]) + system_title + bytes([LONG_FORM_LENGTH])
            + length.to_bytes(2, "big") + bytes([SECURITY_CONTROL]) + counter + sealed)


class FrameEncryptor:
    """Encrypts successive telegrams as one meter does: same system title, counter going up by one."""

    def __init__(self, key: bytes, authentication_key: bytes, system_title: bytes = b"EDGEMU\x00\x01",
                 invocation_counter: int = 1):
        self.key = key
        self.authentication_key = authentication_key
        self.system_title = system_title
        self.invocation_counter = invocation_counter
        encrypt_frame(b"/", key, authentication_key, system_title, invocation_counter)  # check the arguments

    def __repr__(self) -> str:  # never the keys
        return f"FrameEncryptor(system_title={self.system_title!r}, invocation_counter={self.invocation_counter})"

    def __call__(self, plaintext: bytes) -> bytes:
        frame = encrypt_frame(plaintext, self.key, self.authentication_key, self.system_title,
                              self.invocation_counter)
        self.invocation_counter = (self.invocation_counter + 1) % 2**32
        return frame
