"""agentctl.stage.names: which stack a CI run stages on, and which stacks reap takes."""
from datetime import datetime, timedelta, timezone

import pytest

from agentctl.errors import ConfigError
from agentctl.stage.names import STAGING_TAG, StackInfo, made_by_stage, parse_age, stack_name, stale


@pytest.mark.parametrize("given, env, expected", [
    ("lab", {"GITHUB_REF": "refs/pull/7/merge"}, "lab"),                       # --stack wins
    (None, {"GITHUB_REF": "refs/pull/123/merge", "GITHUB_HEAD_REF": "fix/x"}, "staging-pr-123"),
    (None, {"GITHUB_REF": "refs/pull/9/head"}, "staging-pr-9"),
    (None, {"GITHUB_HEAD_REF": "Feature/New_Proxy"}, "staging-feature-new-proxy"),
    (None, {"GITHUB_REF": "refs/heads/main", "GITHUB_REF_NAME": "main"}, "staging-main"),
    (None, {"GITHUB_REF_NAME": "x" * 100}, "staging-" + "x" * 55),              # 63 characters at most
    (None, {"GITHUB_REF_NAME": "a" * 54 + "/b"}, "staging-" + "a" * 54),       # no trailing '-' after the cut
])
def test_stack_name(given, env, expected):
    assert stack_name(given, env) == expected


def test_stack_name_without_ci_is_bad_input():
    with pytest.raises(ConfigError, match="--stack: not given, and no CI environment"):
        stack_name(None, {"GITHUB_REF_NAME": "///"})


@pytest.mark.parametrize("text, expected", [("6h", timedelta(hours=6)), ("90m", timedelta(minutes=90)),
                                            ("2d", timedelta(days=2)), ("30s", timedelta(seconds=30))])
def test_parse_age(text, expected):
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["6", "h", "6x", "-6h", "0h", "6 hours", ""])
def test_parse_age_refuses(text):
    with pytest.raises(ValueError):
        parse_age(text)


NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("info, old", [
    (StackInfo("staging-pr-1", NOW - timedelta(hours=7)), True),
    (StackInfo("acme/staging-pr-2", NOW - timedelta(hours=7)), True),         # org-qualified name
    (StackInfo("staging-pr-3", NOW - timedelta(hours=5)), False),             # young
    (StackInfo("staging-pr-4", NOW - timedelta(hours=6)), False),             # exactly the age: not older
    (StackInfo("staging-pr-6", NOW - timedelta(days=1), update_in_progress=True), False),  # a run is on it
    (StackInfo("staging-pr-7", None), False),                                 # never deployed
])
def test_stale(info, old):
    assert stale([info], NOW, timedelta(hours=6)) == ([info.name] if old else [])


def test_stale_is_sorted():
    old = NOW - timedelta(days=1)
    stacks = [StackInfo("staging-b", old), StackInfo("staging-a", old), StackInfo("prod", NOW)]
    assert stale(stacks, NOW, timedelta(hours=6)) == ["staging-a", "staging-b"]


@pytest.mark.parametrize("tags, made", [
    ({STAGING_TAG: "true", "pulumi:project": "agentctl"}, True),
    ({STAGING_TAG: "false"}, False),
    ({"pulumi:project": "agentctl"}, False),    # a stack stage did not make, whatever its name
    (None, False),
])
def test_selected_by_the_tag_only(tags, made):
    assert made_by_stage(StackInfo("prod", NOW, tags=tags)) is made
