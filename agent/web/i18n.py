"""English and Dutch: the browser's Accept-Language picks one; the catalogues are Babel/gettext `.po` files.

The `.po` files are compiled in memory when the agent starts (Babel's own reader and writer), so the wheel and
the image need no build step and no compiled `.mo` file is kept beside its source.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

LANGUAGES = ("en", "nl")  # the first is the source language of the templates
TRANSLATIONS = Path(__file__).parent / "translations"


def negotiate(accept_language: str | None) -> str:
    """The best of LANGUAGES for an Accept-Language header (q-values honoured; nl-BE is nl); else English."""
    choices = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary and q > 0:
            choices.append((-q, i, primary))
    for _, _, primary in sorted(choices):
        if primary in LANGUAGES:
            return primary
        if primary == "*":
            return LANGUAGES[0]
    return LANGUAGES[0]


@lru_cache(maxsize=None)
def translations(language: str) -> NullTranslations:
    if language == LANGUAGES[0]:
        return NullTranslations()
    with open(TRANSLATIONS / language / "LC_MESSAGES" / "messages.po", "rb") as po:
        catalog = read_po(po, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled)
