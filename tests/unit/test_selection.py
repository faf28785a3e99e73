"""Tag rules on the seed's scheme: full versions, moving aliases, and tags that are neither."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirror.errors import ConfigError
from mirror.selection import TagRules, is_full_version, parse_version, select

SEED_TAGS = [
    "2.1.106",
    "2.1.114",
    "2.2.11",
    "3.0.42",  # full versions
    "2",
    "2.1",
    "2.2",
    "3",
    "3.0",
    "latest",  # moving aliases
    "2.2.12-rc.1",
    "edge",
    "windowsservercore",  # a pre-release and non-versions
]


def selected(rules: TagRules, tags: list[str] = SEED_TAGS) -> set[str]:
    return set(select(tags, rules).tags)


def test_no_rules_select_every_tag() -> None:
    assert selected(TagRules()) == set(SEED_TAGS)


def test_a_range_selects_full_versions_only() -> None:
    assert selected(TagRules(versions=">=2.1, <3")) == {"2.1.106", "2.1.114", "2.2.11"}


def test_aliases_follow_the_versions_they_stand_for() -> None:
    # 2 -> 2.2.11 and 2.1 -> 2.1.114 and 2.2 -> 2.2.11 are selected; 3 and latest -> 3.0.42 not.
    assert selected(TagRules(versions=">=2.1, <3", aliases=True)) == {
        "2.1.106",
        "2.1.114",
        "2.2.11",
        "2",
        "2.1",
        "2.2",
    }


def test_following_a_minor_line() -> None:
    assert selected(TagRules(versions="==2.1.*", aliases=True)) == {"2.1.106", "2.1.114", "2.1"}


def test_an_alias_whose_newest_version_is_left_out_is_left_out() -> None:
    # 2.1 stands for 2.1.114; pinning 2.1.106 alone must not drag 2.1 (a different build) in.
    assert selected(TagRules(versions="==2.1.106", aliases=True)) == {"2.1.106"}


def test_latest_goes_with_the_newest_version() -> None:
    assert "latest" in selected(TagRules(newest=1, aliases=True))
    assert selected(TagRules(newest=1)) == {"3.0.42"}


def test_newest_n_counts_full_versions() -> None:
    assert selected(TagRules(newest=2)) == {"3.0.42", "2.2.11"}


def test_prereleases_only_when_asked() -> None:
    assert "2.2.12-rc.1" not in selected(TagRules(versions=">=2"))
    assert "2.2.12-rc.1" in selected(TagRules(versions=">=2", prereleases=True))


def test_deny_wins_over_allow_and_over_aliases() -> None:
    rules = TagRules(allow=(r"2(\..*)?",), deny=(r"2\.1(\..*)?",), aliases=True)
    assert selected(rules) == {"2", "2.2", "2.2.11", "2.2.12-rc.1"}
    assert "2" not in selected(TagRules(versions=">=2", aliases=True, deny=("2",)))


def test_patterns_match_the_whole_tag() -> None:
    assert selected(TagRules(allow=("2",))) == {"2"}


def test_leading_v_is_tolerated() -> None:
    assert selected(TagRules(versions=">=1.2"), ["v1.1.0", "v1.2.0", "v1.3.1"]) == {
        "v1.2.0",
        "v1.3.1",
    }


def test_every_tag_has_a_reason() -> None:
    selection = select(SEED_TAGS, TagRules(versions=">=2.1, <3", aliases=True))
    reasons = {d.tag: d.reason for d in selection.decisions}
    assert reasons["3.0.42"] == "outside >=2.1, <3"
    assert reasons["2.1"] == "alias of 2.1.114"
    assert reasons["edge"] == "not a version"
    assert reasons["2.2.12-rc.1"] == "pre-release"
    assert len(selection.decisions) == len(SEED_TAGS)


@pytest.mark.parametrize(
    "rules",
    [{"versions": "^2.1"}, {"allow": ("(",)}, {"deny": ("[",)}, {"newest": 0}],
)
def test_bad_rules_are_config_errors(rules: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TagRules(**rules)  # type: ignore[arg-type]


def test_full_versions_are_immutable_aliases_are_not() -> None:
    assert is_full_version("2.1.106") and is_full_version("v1.2.3")
    assert not any(is_full_version(t) for t in ("2", "2.1", "latest", "2.1.106-rc.1"))


def test_parse_version() -> None:
    assert parse_version("v2.1") is not None and parse_version("latest") is None
    assert parse_version("1.22-alpine") is None and parse_version("1.0+build") is None


@given(st.lists(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}", fullmatch=True), max_size=40))
def test_selection_is_a_subset_with_one_decision_per_tag(tags: list[str]) -> None:
    for rules in (TagRules(), TagRules(newest=3, aliases=True), TagRules(versions=">=1")):
        selection = select(tags, rules)
        assert set(selection.tags) <= set(tags)
        assert sorted(d.tag for d in selection.decisions) == sorted(set(tags))
