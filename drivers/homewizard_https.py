"""HomeWizard P1 meter, local API v2: HTTPS with the device's own certificate and a bearer token. I/O here.

The device's certificate is issued by HomeWizard's own CA for the name `appliance/p1dongle/<serial>`, never for the
address it is reached at, so neither the system's CAs nor a host name check can vouch for it. Edge pins it instead:
the SHA-256 of the certificate (DER), learnt once while pairing (`edge-agent homewizard-pair`, while someone presses
the device's button, which proves possession of it) and compared after every TLS handshake, before a byte of a
request is sent: the token never reaches any other certificate. A certificate that does not match is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

API_VERSION = "2"
TELEGRAM_PATH = "/api/telegram"
MEASUREMENT_PATH = "/api/measurement"
USER_PATH = "/api/user"
DEFAULT_USER = "local/edge"


class HomeWizardPortError(OSError):
    """The device cannot be read: a port error (the reader backs off and says why in /health)."""


class CertificateMismatch(HomeWizardPortError):
    pass


class HttpStatus(HomeWizardPortError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def fingerprint(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


def parse_pin(text: str) -> bytes:
    """`sha256:<64 hex digits>` (colons between bytes allowed) -> the 32-byte digest."""
    digits = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError("must be sha256:<64 hex digits> (what edge-agent homewizard-pair prints)")
    return bytes.fromhex(digits)


def parse_token(text: str) -> str:
    if len(text) != 32 or any(c not in "0123456789ABCDEFabcdef" for c in text):
        raise ValueError("must be the 32 hex digits HomeWizard's POST /api/user gave (edge-agent homewizard-pair)")
    return text


def _context() -> ssl.SSLContext:
    # No CA and no host name can vouch for the device (see the module doc): the pin does, checked in _connect.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class Client:
    """One device: a kept-alive HTTPS connection whose certificate is checked against `pin` at every connect."""

    def __init__(self, base_url: str, pin: bytes | None, token: str | None, timeout: float = 3.0):
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"not an https:// URL: {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 443
        self.pin, self.token, self.timeout = pin, token, timeout
        self._connection: http.client.HTTPSConnection | None = None
        self._context = _context()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def certificate(self) -> bytes:
        """The device's certificate (DER) as it presents it now; nothing is sent."""
        with socket.create_connection((self.host, self.port), self.timeout) as raw:
            with self._context.wrap_socket(raw) as tls:
                return tls.getpeercert(binary_form=True) or b""

    def _connect(self) -> http.client.HTTPSConnection:
        connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._context)
        try:
            connection.connect()
            der = connection.sock.getpeercert(binary_form=True) or b""
        except (OSError, http.client.HTTPException):
            connection.close()
            raise
        if self.pin is None or not hmac.compare_digest(hashlib.sha256(der).digest(), self.pin):
            connection.close()
            raise CertificateMismatch(f"the device's certificate is not the pinned one (it presents {fingerprint(der)}"
                                      "): refused, nothing sent; if the device was replaced, pair again")
        return connection

    def request(self, method: str, path: str, body: dict[str, object] | None = None,
                limit: int = 64 * 1024) -> tuple[int, bytes]:
        """(status, body) of one request; raises HomeWizardPortError subclasses or OSError, the connection closed."""
        headers = {"X-Api-Version": API_VERSION}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = None
        if body is not None:
            payload, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        try:
            if self._connection is None:
                self._connection = self._connect()
            self._connection.request(method, path, body=payload, headers=headers)
            response = self._connection.getresponse()
            data = response.read(limit + 1)
            if response.will_close or len(data) > limit:  # unread bytes would be the next answer's start
                self.close()
            return response.status, data
        except http.client.HTTPException as err:
            self.close()
            raise HomeWizardPortError(f"{err.__class__.__name__}: {err}") from None
        except OSError:
            self.close()
            raise

    def get(self, path: str, limit: int = 64 * 1024) -> bytes:
        """The body of a 200; any other status is a port error saying what the device said."""
        status, data = self.request("GET", path, limit=limit)
        if status == 200:
            return data
        if status == 401:
            raise HttpStatus(401, "the device refused the token (401 user:unauthorized): pair again with "
                                  "edge-agent homewizard-pair and set the meter's token")
        raise HttpStatus(status, f"GET {path}: HTTP {status} {_error_code(data)}".rstrip())


def _error_code(data: bytes) -> str:
    """HomeWizard's error code ({"error": "user:unauthorized"} or a plain text one), never more than a line."""
    try:
        code = json.loads(data).get("error", "")
    except (ValueError, AttributeError):
        code = data.decode("latin-1", "replace")
    return str(code).splitlines()[0][:80] if code else ""


def certificate_name(der: bytes) -> str:
    """The certificate's subject common name (HomeWizard's: appliance/p1dongle/<serial>), for the person pairing."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return "(unreadable certificate)"
    return str(names[0].value) if names else "(no common name)"


def pair(base_url: str, user: str = DEFAULT_USER, wait_s: float = 60.0, retry_s: float = 1.0,
         say: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic) -> tuple[str, str]:
    """(token, pin) from POST /api/user, repeated while the device answers 403 (its button not pressed yet),
    every request pinned to the certificate the device presented first. Raises HomeWizardPortError."""
    der = Client(base_url, None, None).certificate()
    pin = fingerprint(der)
    say(f"{base_url} presents the certificate {certificate_name(der)!r}, {pin}")
    client = Client(base_url, parse_pin(pin), None)
    deadline, asked = clock() + wait_s, False
    try:
        while True:
            status, data = client.request("POST", USER_PATH, {"name": user})
            if status == 200:
                try:
                    token = parse_token(json.loads(data)["token"])
                except (ValueError, KeyError, TypeError):
                    raise HomeWizardPortError("the device's answer holds no token") from None
                return token, pin
            if status != 403:
                raise HttpStatus(status, f"POST {USER_PATH}: HTTP {status} {_error_code(data)}".rstrip())
            if not asked:
                say("press the button on the HomeWizard P1 meter now")
                asked = True
            if clock() >= deadline:
                raise HomeWizardPortError(f"the button was not pressed within {wait_s:g} s")
            time.sleep(retry_s)
    finally:
        client.close()
