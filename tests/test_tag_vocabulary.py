"""[privacy] tags: the operator's vocabulary of channel tags, checked whole at start like every other key."""

from __future__ import annotations

import pytest

from agent.config import DEFAULT_TAGS, MAX_TAGS, ConfigError, parse_config

BASE = {"auth": {"operator_token": "x" * 16}}


def tags_of(tags) -> tuple[str, ...]:
    return parse_config({**BASE, "privacy": {"tags": tags}}).privacy.tags


def test_the_default_vocabulary_is_appliance_words():
    assert parse_config(BASE).privacy.tags == DEFAULT_TAGS
    assert {"ev", "heat_pump", "fridge", "pv_inverter", "other"} <= set(DEFAULT_TAGS)
    assert len(DEFAULT_TAGS) == len(set(DEFAULT_TAGS)) == 15


def test_the_operators_order_is_kept_and_an_empty_vocabulary_is_allowed():
    assert tags_of(["sauna", "ev", "boiler-2"]) == ("sauna", "ev", "boiler-2")
    assert tags_of([]) == ()  # no channels at all on this device


@pytest.mark.parametrize("tags, words", [
    (["ev", "ev"], "'ev' is listed twice"),
    (["Fridge"], "'Fridge': a tag is 1-32 lowercase"),
    (["ev\n"], "a tag is 1-32 lowercase"),  # "$" in a pattern matches before a final newline
    (["-ev"], "a tag is 1-32"),
    (["x" * 33], "a tag is 1-32"),
    ([""], "a tag is 1-32"),
    ([3], "3: a tag is"),
    ([f"t{i}" for i in range(MAX_TAGS + 1)], f"at most {MAX_TAGS} tags"),
    ("ev", "must be list"),
])
def test_bad_vocabularies_stop_the_agent_naming_the_key(tags, words):
    with pytest.raises(ConfigError) as err:
        tags_of(tags)
    assert err.value.key == "privacy.tags" and words in str(err.value), str(err.value)


def test_at_most_max_tags_is_fine():
    assert len(tags_of([f"t{i}" for i in range(MAX_TAGS)])) == MAX_TAGS
