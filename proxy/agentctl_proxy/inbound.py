"""Shape checks on an inbound request, before policy: framing headers and where it says it goes.

Pure functions over a mitmproxy Request; each returns why the request is refused, or None.
"""

from __future__ import annotations

import re

from mitmproxy import http

from agentctl_proxy.hosts import split_host_port

# RFC 9110 5.5: a field value is visible characters, SP and HTAB; every other control
# byte (CR, LF, NUL, \x0b, \x7f, ...) is refused in every protocol. A field name is a
# token. h2 checks neither for us (and forwards \x0b and \x7f to an HTTP/1 upstream).
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9A-Za-z\x01]")


# mitmproxy's Headers methods convert the name and raise and catch KeyError on every
# lookup of an absent header (~7 us each here); these read `fields` directly, with
# the same results (tests/test_inbound.py compares them over generated headers).


def header_values(headers: http.Headers, name: bytes) -> list[str]:
    """headers.get_all(name), for a lower-case name."""
    return [v.decode("utf-8", "surrogateescape") for k, v in headers.fields if k.lower() == name]


def header_get(headers: http.Headers, name: bytes) -> str | None:
    """headers.get(name): the values joined by ", ", or None; for a lower-case name."""
    values = header_values(headers, name)
    return ", ".join(values) if values else None


def drop_header(headers: http.Headers, name: bytes) -> None:
    """headers.pop(name, None): every field of that name removed; for a lower-case name."""
    for k, _ in headers.fields:
        if k.lower() == name:
            del headers[name]
            return


def header_problem(req: http.Request) -> str | None:
    fields = req.headers.fields
    # one search over all values and one over all names, joined by \t (allowed in a
    # value) and \x01 (let through in names: it is in no name, and refused in values)
    if _BAD_VALUE.search(b"\t".join([v for _, v in fields])) or \
            _BAD_NAME.search(b"\x01".join([k for k, _ in fields])) or any(not k for k, _ in fields):
        return "header with a control character or a name that is not a token"
    lengths: list[str] = []
    te: list[str] = []
    for k, v in fields:
        k = k.lower()
        if k == b"content-length":
            lengths.append(v.decode("utf-8", "surrogateescape"))
        elif k == b"transfer-encoding":
            te.append(v.decode("utf-8", "surrogateescape"))
    if te and lengths:
        return "both Content-Length and Transfer-Encoding"
    if len(set(lengths)) > 1 or any(not x.strip().isdigit() for x in lengths):
        return "conflicting or malformed Content-Length"
    if te and (len(te) > 1 or te[0].strip().lower() != "chunked"):
        return "Transfer-Encoding other than chunked"
    return None


def is_absolute_form(req: http.Request) -> bool:
    """An HTTP/1 request-target that names a host (`GET https://h/p HTTP/1.1`).

    mitmproxy clears the authority of absolute-form requests it routes itself (the
    plain explicit proxy); where the connection decides the target (TLS in a tunnel,
    DNS mode) it keeps it and forwards the request-target as sent.
    """
    return not (req.is_http2 or req.is_http3) and bool(req.authority)


def authority_problem(req: http.Request, target: str, port: int, tls: bool) -> tuple[int, str] | None:
    """(status, reason) unless every name the request gives for its host is the target.

    HTTP/1: exactly one Host header. HTTP/2: `:authority` and any Host header must all
    agree, because an HTTP/1 upstream receives the Host header when both are sent.
    """
    hosts = header_values(req.headers, b"host")
    authority = req.authority if (req.is_http2 or req.is_http3) else ""
    claims = [a for a in (authority, *hosts) if a]
    if len(hosts) > 1 or not claims:
        return 400, "expected exactly one Host header"
    for claim in claims:
        try:
            host, claim_port = split_host_port(claim, 443 if tls else 80)
        except ValueError:
            return 400, "malformed Host header"
        if (host, claim_port) != (target, port):
            return 403, f"Host {host} does not match the target {target}"
    return None


def frame_for_upstream(req: http.Request) -> str | None:
    """Make the buffered request unambiguous for whatever protocol the upstream speaks,
    or say why it cannot be forwarded.

    mitmproxy converts an HTTP/2 request for an HTTP/1.1 upstream without adding any
    framing (proxy/layers/http/_http1.py, Http1Client.send): a body without
    Content-Length would follow the head unframed and be read as a second request. The
    body is fully buffered by now (we never stream requests: internals.py), so its length is
    known: Content-Length is set from it, and chunked framing is dropped (mitmproxy would
    re-chunk it). Trailers cannot be carried by that framing, and Http1Client.send fails
    on them: refused. The method is forwarded as the decision read it (upper case).
    """
    if req.trailers:
        return "request trailers are not forwarded"
    body = req.raw_content
    if body is None:  # a streamed body: its length is unknown
        return "request body of unknown length"
    req.method = req.method  # mitmproxy's getter upper-cases; the setter stores that
    drop_header(req.headers, b"transfer-encoding")
    if body or header_values(req.headers, b"content-length"):
        req.headers["content-length"] = str(len(body))
    return None
