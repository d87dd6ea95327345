"""Notifications to a household's own endpoint: a webhook URL (JSON, signed by the caller) or an
ntfy-style topic URL (``POST https://ntfy.sh/<topic>`` with the text as body and a ``Title`` header;
ntfy, Gotify-compatible bridges and similar push services accept it).

I/O only: the caller hands in an aiohttp session whose resolver enforces its address policy, and the
headers it wants added (the signature of a webhook). Never imports agent/.
"""

from __future__ import annotations

import aiohttp

KINDS = ("webhook", "ntfy")
MAX_ANSWER_BYTES = 64 * 1024


class NotifyError(Exception):
    """Not delivered. The message is ours and short (a status or an exception's class)."""


def _header_safe(text: str) -> str:
    """A header value: printable ASCII only (anything else becomes '?'), at most 200 characters."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:200]


async def send(session: aiohttp.ClientSession, url: str, kind: str, *, title: str, message: str,
               body: bytes, headers: dict[str, str] | None = None) -> int:
    """Deliver one notification; returns the endpoint's 2xx status, raises NotifyError for anything else.

    ``body`` is the JSON document for a webhook; ``title`` and ``message`` are what an ntfy topic shows.
    """
    if kind == "webhook":
        data, send_headers = body, {"content-type": "application/json", **(headers or {})}
    elif kind == "ntfy":
        data = message.encode("utf-8")
        send_headers = {"content-type": "text/plain; charset=utf-8", "Title": _header_safe(title),
                        "Tags": "zap"}
    else:
        raise NotifyError(f"unknown endpoint kind {kind!r}")
    try:
        async with session.post(url, data=data, headers=send_headers, allow_redirects=False) as resp:
            await resp.content.read(MAX_ANSWER_BYTES)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as err:
        raise NotifyError(err.__class__.__name__) from None
    if not 200 <= status < 300:
        raise NotifyError(f"HTTP {status}")
    return status
