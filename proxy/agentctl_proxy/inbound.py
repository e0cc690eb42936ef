"""Shape checks on an inbound request, before policy: framing headers and where it says it goes.

Pure functions over a mitmproxy Request; each returns why the request is refused, or None.
"""

from __future__ import annotations

from mitmproxy import http

from agentctl_proxy.hosts import split_host_port


def header_problem(req: http.Request) -> str | None:
    for name, value in req.headers.fields:
        if any(c in value for c in b"\r\n\x00") or any(c in name for c in b"\r\n\x00: "):
            return "header with CR, LF or NUL"
    if "transfer-encoding" in req.headers and "content-length" in req.headers:
        return "both Content-Length and Transfer-Encoding"
    lengths = req.headers.get_all("content-length")
    if len(set(lengths)) > 1 or any(not x.strip().isdigit() for x in lengths):
        return "conflicting or malformed Content-Length"
    te = req.headers.get_all("transfer-encoding")
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
    hosts = req.headers.get_all("host")
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
