"""English and Dutch (agent/web/i18n.py) on data: Accept-Language negotiated, and the Dutch catalogue complete for
every message of the templates and the pages' code, its placeholders the same as the English ones."""

from __future__ import annotations

import re

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from babel.support import NullTranslations

from agent.web import i18n


def test_accept_language_negotiation():
    assert i18n.negotiate("nl-BE") == "nl"
    assert i18n.negotiate("en;q=0.4, nl;q=0.6") == "nl"
    assert i18n.negotiate("nl;q=0, en") == "en"
    assert i18n.negotiate("*") == "en"
    assert i18n.negotiate("xx;q=bad") == "en"


def test_every_message_of_the_pages_has_a_dutch_translation():
    directory = i18n.TRANSLATIONS.parent
    method_map = [("templates/**.html", "jinja2"), ("**.py", "python")]
    options = {"templates/**.html": {"trim_blocks": "True", "lstrip_blocks": "True"}}
    extracted = {m[2] if isinstance(m[2], str) else m[2][0]
                 for m in extract_from_dir(str(directory), method_map, options_map=options)}
    with open(i18n.TRANSLATIONS / "nl" / "LC_MESSAGES" / "messages.po", "rb") as po:
        catalog = {m.id: m.string for m in read_po(po) if m.id}
    assert extracted, "no message found in the templates"
    missing = sorted(m for m in extracted if not catalog.get(m))
    assert not missing, f"untranslated: {missing[:5]}"
    for msgid, msgstr in catalog.items():
        assert set(re.findall(r"%\((\w+)\)s", msgid)) == set(re.findall(r"%\((\w+)\)s", msgstr)), msgid


@pytest.mark.parametrize("header,language", [
    (None, "en"), ("", "en"), ("NL", "nl"), ("fr, nl;q=0.2", "nl"), ("fr, de", "en"),
    ("nl;q=0.5, en;q=0.5", "nl"), ("en;q=0.5, nl;q=0.5", "en"),  # a tie: the order the browser gave
    ("*;q=0.9, nl;q=0.8", "en"), ("nl;q=0.0", "en"), ("nl;q=", "en"), (";q=1, nl", "nl"), ("nl-BE;foo=1", "nl"),
])
def test_the_best_language_of_the_header_else_english(header, language):
    assert i18n.negotiate(header) == language


def test_english_is_the_templates_own_and_dutch_is_compiled_from_its_po_file():
    assert type(i18n.translations("en")) is NullTranslations
    dutch = i18n.translations("nl")
    assert dutch.gettext("My data") == "Mijn gegevens"
    assert dutch.gettext("a message nobody wrote") == "a message nobody wrote"
    assert i18n.translations("nl") is dutch  # compiled once
    with pytest.raises(FileNotFoundError):
        i18n.translations("xx")
