"""Sign-in for the device's web pages: one-time links and sessions, in memory, no I/O.

A sign-in link carries a random code, stored only as its SHA-256 hash, valid once and for `link_ttl_s`; it is
the only token that ever appears in a URL. Redeeming it (or presenting the household's or operator's token in the
sign-in form) opens a session: a random id in an HttpOnly, SameSite=Strict cookie, its own CSRF token, ended by
signing out, by `idle_s` without a request, or `max_age_s` after it opened. A restart of the agent ends every
session and link (they are not worth an SD-card write: the installer prints a new link).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

LINK_TTL_S = 24 * 3600  # a printed link is used the same day or not at all
IDLE_S = 30 * 60
MAX_AGE_S = 12 * 3600
MAX_LINKS = 1000  # outstanding links; the oldest go first (bounded memory)
MAX_SESSIONS = 1000


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class Session:
    role: str  # agent.auth.HOUSEHOLD or OPERATOR
    subject: str  # the household's id, or "operator"
    csrf: str
    opened_at: float
    seen_at: float


@dataclass(frozen=True)
class _Link:
    role: str
    subject: str
    expires_at: float


class SignIn:
    def __init__(self, clock, link_ttl_s: float = LINK_TTL_S, idle_s: float = IDLE_S, max_age_s: float = MAX_AGE_S):
        self.clock = clock
        self.link_ttl_s, self.idle_s, self.max_age_s = link_ttl_s, idle_s, max_age_s
        self._links: dict[str, _Link] = {}
        self._sessions: dict[str, Session] = {}

    # --- one-time links ------------------------------------------------------------------------
    def new_link(self, role: str, subject: str) -> str:
        """A fresh code for `role`/`subject`; earlier codes of the same subject stay valid until used or expired."""
        code = secrets.token_urlsafe(24)
        self._links[_digest(code)] = _Link(role, subject, self.clock() + self.link_ttl_s)
        while len(self._links) > MAX_LINKS:
            del self._links[next(iter(self._links))]
        return code

    def redeem(self, code: str) -> _Link | None:
        """The link's role and subject, once: a used, expired or unknown code is None."""
        link = self._links.pop(_digest(code), None)
        if link is None or self.clock() >= link.expires_at:
            return None
        return link

    # --- sessions ------------------------------------------------------------------------------
    def open(self, role: str, subject: str) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(role, subject, secrets.token_urlsafe(24), now, now)
        self._sessions[_digest(session_id)] = session
        while len(self._sessions) > MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        return session_id, session

    def session(self, session_id: str | None, touch: bool = True) -> Session | None:
        """The live session with this id (with `touch`, its idle time restarts), or None if unknown or expired."""
        if not session_id:
            return None
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock()
        if now - session.seen_at >= self.idle_s or now - session.opened_at >= self.max_age_s:
            del self._sessions[key]
            return None
        if touch:
            session.seen_at = now
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_digest(session_id), None)

    @staticmethod
    def csrf_ok(expected: str, presented) -> bool:
        return isinstance(presented, str) and bool(presented) and hmac.compare_digest(expected, presented)
