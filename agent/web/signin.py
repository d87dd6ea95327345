"""Sign-in for the device's web pages: one-time links and sessions, in memory, no I/O.

A sign-in link carries a random code, stored only as its SHA-256 hash, valid once and for `link_ttl_s`; it is
the only token that ever appears in a URL. Redeeming it (or presenting the household's or operator's token in the
sign-in form) opens a session: a random id in an HttpOnly, SameSite=Strict cookie, its own CSRF token, ended by
signing out, by `idle_s` without a request, or `max_age_s` after it opened; all of a household's at once (`end`)
when its token is rotated or it is deleted. A restart of the agent ends every session and link (they are not
worth an SD-card write: the installer prints a new link).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from agent.clock import Clock

LINK_TTL_S = 24 * 3600  # a printed link is used the same day or not at all
IDLE_S = 30 * 60
MAX_AGE_S = 12 * 3600
# Per subject (a household, or the operator), never in all: a subject's new link or session ends its own oldest
# link or least recently used session, never another's, so nothing one household does to the tables shows in, or
# takes from, another's. In all they hold at most this many per household the operator registered (and the
# operator's): there is no bound over all that anyone could fill (red team 6b, R6b-1).
LINKS_PER_SUBJECT = 8  # a household's outstanding links (the installer printed a new one, the old is lost)
SESSIONS_PER_SUBJECT = 8  # a household's browsers signed in at once (phones, laptops, a wall display)


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


E = TypeVar("E", Session, _Link)


class _PerSubject(Generic[E]):
    """Entries by their secret's digest, at most `limit` per subject, each subject's in the order they go first (the
    oldest, or the least recently used: `used` moves one to the end)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._entries: dict[str, E] = {}
        self._of: dict[str, dict[str, None]] = {}  # subject -> its digests, first to go first

    def add(self, key: str, entry: E, stale: Callable[[E], bool]) -> None:
        for old in [k for k in self._of.get(entry.subject, ()) if stale(self._entries[k])]:
            self.pop(old)  # an expired entry never keeps a live one's place
        keys = self._of.setdefault(entry.subject, {})
        while len(keys) >= self.limit:
            self.pop(next(iter(keys)))
        keys[key] = None
        self._entries[key] = entry

    def get(self, key: str) -> E | None:
        return self._entries.get(key)

    def used(self, key: str) -> None:
        keys = self._of[self._entries[key].subject]
        keys[key] = keys.pop(key)

    def pop(self, key: str) -> E | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            keys = self._of[entry.subject]
            del keys[key]
            if not keys:
                del self._of[entry.subject]
        return entry

    def end(self, subject: str) -> None:
        for key in self._of.pop(subject, {}):
            del self._entries[key]


class SignIn:
    def __init__(self, clock: Clock, link_ttl_s: float = LINK_TTL_S, idle_s: float = IDLE_S,
                 max_age_s: float = MAX_AGE_S):
        self.clock = clock
        self.link_ttl_s, self.idle_s, self.max_age_s = link_ttl_s, idle_s, max_age_s
        self._links: _PerSubject[_Link] = _PerSubject(LINKS_PER_SUBJECT)
        self._sessions: _PerSubject[Session] = _PerSubject(SESSIONS_PER_SUBJECT)

    # --- one-time links ------------------------------------------------------------------------
    def new_link(self, role: str, subject: str) -> str:
        """A fresh code for `role`/`subject`; the subject's earlier codes stay valid until used or expired (or,
        past LINKS_PER_SUBJECT of them, the oldest goes)."""
        code = secrets.token_urlsafe(24)
        self._links.add(_digest(code), _Link(role, subject, self.clock() + self.link_ttl_s),
                        lambda link: self.clock() >= link.expires_at)
        return code

    def redeem(self, code: str) -> _Link | None:
        """The link's role and subject, once: a used, expired or unknown code is None."""
        link = self._links.pop(_digest(code))
        if link is None or self.clock() >= link.expires_at:
            return None
        return link

    # --- sessions ------------------------------------------------------------------------------
    def open(self, role: str, subject: str) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(role, subject, secrets.token_urlsafe(24), now, now)
        self._sessions.add(_digest(session_id), session, self._expired)
        return session_id, session

    def _expired(self, session: Session) -> bool:
        now = self.clock()
        return now - session.seen_at >= self.idle_s or now - session.opened_at >= self.max_age_s

    def session(self, session_id: str | None, touch: bool = True) -> Session | None:
        """The live session with this id (with `touch`, its idle time restarts), or None if unknown or expired."""
        if not session_id:
            return None
        key = _digest(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        if self._expired(session):
            self._sessions.pop(key)
            return None
        if touch:
            session.seen_at = self.clock()
            self._sessions.used(key)
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_digest(session_id))

    def end(self, subject: str) -> None:
        """Every session and link of `subject`, ended now (its token was rotated, or it was deleted)."""
        self._sessions.end(subject)
        self._links.end(subject)

    @staticmethod
    def csrf_ok(expected: str, presented: object) -> bool:
        return isinstance(presented, str) and bool(presented) and hmac.compare_digest(expected, presented)
