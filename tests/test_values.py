"""The boundary checks for strings that reach scripts, units and URLs."""
from __future__ import annotations

import pytest

from agentctl import values


@pytest.mark.parametrize("url", ["https://hc-ping.com/uuid", "https://a.b-c.example:443/p/q?x=1&y=%20",
                                 "https://github.com/NousResearch/hermes-agent"])
def test_https_urls_that_pass(url):
    assert values.https_url(url) == url


@pytest.mark.parametrize("url,words", [
    ("https://hb.example/$(id)", "percent-encode"), ("https://hb.example/`id`", "percent-encode"),
    ("https://hb.example/a b", "whitespace"), ("https://hb.example/a\tb", "control character"),
    ("ftp://hb.example/", "https"), ("https://10.0.0.1/", "host name"), ("https://hb.example:0/", "port"),
    ("https://hb.example:99999/", "not a valid URL"), ("https://user@hb.example/", "credentials"),
    ("https://hb.example/#frag", "fragment"), ("https:///path", "host name"),
])
def test_https_urls_refused(url, words):
    with pytest.raises(ValueError, match=words) as err:
        values.https_url(url)
    assert url not in str(err.value)  # never repeated: it may be a secret, or hold a newline


def test_url_without_query_where_none_belongs():
    with pytest.raises(ValueError, match="query"):
        values.https_url("https://github.com/x/y?upload-pack=x", query=False)


@pytest.mark.parametrize("ref,ok", [("v2026.11.0", True), ("release/1.2", True), ("1.0+local", True),
                                    ("-x", False), ("a..b", False), ("v1 x", False), ("v1;id", False),
                                    ("v1.lock", False), ("", False)])
def test_git_refs(ref, ok):
    if ok:
        assert values.git_ref(ref) == ref
    else:
        with pytest.raises(ValueError):
            values.git_ref(ref)


@pytest.mark.parametrize("name,credential", [("OPENAI_API_KEY", True), ("GITHUB_TOKEN", True), ("DB_PASS", True),
                                             ("KEYBOARD", False), ("TOKENIZERS_PARALLELISM", False),
                                             ("LOG_LEVEL", False)])
def test_credential_names(name, credential):
    assert values.looks_like_credential(name) is credential
