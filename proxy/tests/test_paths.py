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


# ------------------------------------------------- the fast path and the original check
# check_path accepts plain paths (ASCII pchars, no ".", "%" or ";", no empty segment) by
# one regex and sends everything else through check_path_full, itself sped up (a regex
# for control characters, no NFKC of ASCII, the dot-segment test only where a "." is).
# Both must answer exactly as the original check did, reason and encoded_slash included.

import originals  # noqa: E402
from hypothesis import example, settings  # noqa: E402
from test_e2e_battery import BAD_PATHS  # noqa: E402

from agentctl_proxy.paths import _PLAIN, check_path_full  # noqa: E402

# pieces that make every branch of the check: encodings of dots, slashes, backslashes,
# ";", control characters, overlong UTF-8, fullwidth and other folding characters,
# spaces, characters outside RFC 3986, a lone surrogate (surrogateescape), plain text
PIECES = ["/", "/", "/", ".", ".", "..", "%", "%2e", "%2E", "%25", "%252e", "%2f", "%2F", "%5c", "%5C", "%3b",
          "%00", "%0a", "%0d", "%1f", "%7f", "%20", "%09", "%41", "%c3%a9", "%c0%ae", "%c0%af", "%e0%80%ae",
          "%ef%bc%8e", "%ef%bc%8f", "%e3%80%80", "%e2%80%a4", "%zz", "%4", ";", "\\", " ", "\t", "\x00", "\x1f",
          "\x7f", "a", "Z", "0", "v1", "repos", "-", "_", "~", "!", "$", "&", "'", "(", ")", "*", "+", ",", "=",
          ":", "@", "#", "?", "|", "<", ">", "[", "^", "`", "{", "\"", "\u00e9", "\uff0e", "\uff0f", "\u2024",
          "\u3000", "\u00a0", "\u2215", "\ufe52", "\udcff", "\u0338", "\u212a"]
generated_paths = st.lists(st.sampled_from(PIECES), max_size=14).map("".join)
# what _PLAIN describes ("/", "/a", "/a/", "/a/b", ...), built directly: from_regex is slow
PLAIN_CHARS = "ABCXYZabcxyz0189-_~!$&'()*+,=:@"
plain_paths = st.builds(lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs else ""),
                        st.lists(st.text(PLAIN_CHARS, min_size=1, max_size=5), max_size=5), st.booleans())
BAD_FORMS = sorted(set(REFUSED) | set(BAD_PATHS))


def _same_as_original(path):
    want = originals.check_path(path)
    assert check_path(path) == want, path
    assert check_path_full(path) == want, path


@pytest.mark.parametrize("path", BAD_FORMS + ["/", "/a", "/a/", "/v1/bench", "/a/b.json", "/a/%41", "/files/100%25"])
def test_every_known_form_is_judged_as_the_original_judged_it(path):
    _same_as_original(path)


@pytest.mark.slow  # over 5 s: not in the fast tier
@settings(max_examples=1500, deadline=None)
@given(st.one_of(generated_paths, plain_paths, st.text(max_size=24)))
@example("/")
@example("")
@example("//")
@example("/a//")
@example("/\u212a")
def test_fast_and_full_check_equal_the_original(path):
    _same_as_original(path)


@settings(max_examples=500, deadline=None)
@given(plain_paths, st.sampled_from(BAD_FORMS), plain_paths)
def test_a_bad_form_inside_a_plain_path_is_judged_as_the_original_judged_it(head, bad, tail):
    for path in (head + bad, bad + tail, head.rstrip("/") + bad + tail, head + bad[1:]):
        _same_as_original(path)


@settings(max_examples=500, deadline=None)
@given(st.one_of(plain_paths, generated_paths))
def test_the_fast_path_takes_only_what_the_original_accepts_plainly(path):
    if _PLAIN.fullmatch(path):
        assert originals.check_path(path) == check_path(path) == type(check_path(path))(True)


@given(plain_paths)
def test_plain_paths_take_the_fast_path(path):
    """The strategy above really is the fast path's language (so it is exercised)."""
    assert _PLAIN.fullmatch(path)


def test_the_fast_path_refuses_nothing_itself():
    """Every refusal comes from the full check: the regex only accepts."""
    for path in BAD_FORMS:
        assert not _PLAIN.fullmatch(path)


def test_every_character_and_byte_alone_in_a_plain_path_is_judged_as_the_original_judged_it():
    """One problem at a time: each code point below U+0100 raw, each byte percent-encoded
    (once and twice), and each piece above, at the start, inside and at the end of a segment."""
    singles = [chr(c) for c in range(0x100)] + [f"%{b:02x}" for b in range(0x100)] + \
        [f"%{b:02X}" for b in range(0x100)] + [f"%25{b:02x}" for b in range(0x100)] + PIECES
    for x in singles:
        for path in (f"/{x}", f"/a/{x}", f"/a/{x}b/c", f"/a/b{x}/", f"/v1/{x}{x}/x", f"/{x}/{x}"):
            _same_as_original(path)
