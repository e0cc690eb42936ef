"""paths.check_path: every non-canonical form is refused, in every encoding."""

import pytest
from hypothesis import given, strategies as st

from agentctl_proxy.paths import check_path, check_query

REFUSED = {
    "/a/../b": "dot segment", "/a/./b": "dot segment", "/a/..": "dot segment",
    "/a/%2e%2e/b": "encoded dot segment", "/a/%2E%2E/b": "encoded dot segment",
    "/a/.%2e/b": "encoded dot segment", "/a/%252e%252e/b": "encoded dot segment",
    "/a/%25252e%25252e/b": "encoded dot segment", "/a/%c0%ae%c0%ae/b": "encoded invalid or overlong UTF-8",
    "/a/%c0%af": "encoded invalid or overlong UTF-8", "/a/%e0%80%ae": "encoded invalid or overlong UTF-8",
    "/a//b": "empty segment (//)", "/a\\b": "backslash", "/a/%5cb": "encoded backslash",
    "/a;x=1": "path parameter (;)", "/a%3bx": "encoded path parameter (;)", "/a/%00": "encoded control character",
    "/a/\x00": "control character", "/a/%0a": "encoded control character", "/a/%7f": "encoded control character",
    "/a/%zz": "malformed percent-encoding", "/a/%": "malformed percent-encoding",
    "/a/%ef%bc%8e%ef%bc%8e/b": "encoded unicode character that folds to a path delimiter",
    "/a/\uff0fb": "unicode character that folds to a path delimiter",
    "a/b": "not an origin-form path", "*": "not an origin-form path",
    # dots and spaces only: servers that trim or collapse them see a dot segment
    "/a/%20../b": "encoded dot segment", "/a/..%20/b": "encoded dot segment", "/a/.../b": "dot segment",
    "/a/. ./b": "dot segment", "/a/%2e%20%2e/b": "encoded dot segment", "/a/%2520%2e%2e/b": "encoded dot segment",
    "/a/..%e3%80%80/b": "encoded unicode character that folds to a path delimiter",  # ideographic space
    # raw characters outside RFC 3986 pchar / "/" (an HTTP/2 :path may carry them)
    "/a/x /admin": "character outside RFC 3986 path characters",
    "/a/x#frag": "character outside RFC 3986 path characters",
    "/a/caf\u00e9": "character outside RFC 3986 path characters",
    "/a/<x>": "character outside RFC 3986 path characters",
    "/a/x|y": "character outside RFC 3986 path characters",
}


@pytest.mark.parametrize("path,reason", REFUSED.items())
def test_refused_with_reason(path, reason):
    v = check_path(path)
    assert not v.ok and v.reason == reason


@pytest.mark.parametrize("path", ["/", "/a", "/a/", "/a/b.json", "/a/..b", "/a/b..", "/a/%41", "/files/100%25",
                                  "/a/caf%c3%a9", "/simple/requests/", "/a/%20", "/a/x%20y", "/a/.x.",
                                  "/a/:@!$&'()*+,=-_~"])
def test_canonical_paths_pass(path):
    assert check_path(path).ok


def test_encoded_slash_is_flagged_not_refused():
    assert check_path("/b/a%2Fc").encoded_slash and check_path("/b/a%2Fc").ok
    assert check_path("/b/a%252Fc").encoded_slash
    assert not check_path("/b/a/c").encoded_slash
    assert not check_path("/b/a%2F..%2Fc").ok  # a dot segment behind the slash


@pytest.mark.parametrize("query,ok", [
    ("", True), ("a=1&b=%20x", True), ("a=/b?c:d@e", True), ("a=b c", False), ("a=\x7f", False),
    ("a=\n", False), ("a=<b>", False), ("a=caf\u00e9", False),
])
def test_query_characters(query, ok):
    assert (check_query(query) is None) == ok


@given(st.text(alphabet="/.%2eEfFcC05a;\\ ", max_size=14))
def test_no_accepted_path_decodes_to_a_dot_segment(path):
    """Property: whatever passes never has a segment of only dots and spaces after any decoding."""
    from urllib.parse import unquote

    v = check_path(path)
    if v.ok:
        layer = path
        for _ in range(4):
            assert not any(s.strip(" .") == "" and "." in s for s in layer.split("/"))
            layer = unquote(layer)
