"""The proxy's DNS server (UDP and TCP): answers, never forwards.

A name some grant of the asking client allows answers with `dns.proxy_ip` (so the
client's traffic comes to the proxy); `records` are static answers; names listed in
`passthrough` are resolved by the system resolver and answered as A/AAAA only.
Everything else is REFUSED. No query is relayed, so DNS cannot carry a tunnel.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time

from mitmproxy import dns
from mitmproxy.net.dns import response_codes, types

from agentctl_proxy.config import parse_listen
from agentctl_proxy.hosts import normalize_host, parse_ip_literal

log = logging.getLogger("agentctl_proxy.dns")
# mitmproxy 12 renamed dns.Message to dns.DNSMessage (same fields). Resolved here, at
# import: a lookup inside answer() would fail in its catch-all and drop every query.
DNSMessage = getattr(dns, "DNSMessage", None) or dns.Message
TTL = 30


class DnsAnswerer:
    def __init__(self, addon) -> None:
        self.addon = addon  # the live runtime is read through it, so reloads apply

    async def answer(self, packet: bytes, remote: str) -> bytes | None:
        start = time.monotonic()
        rt = self.addon.rt
        try:
            msg = DNSMessage.unpack(packet)
        except Exception:  # not DNS: no answer at all, and one (budgeted) line saying so
            ident = rt.policy.identify(remote)
            agent = ident.name if ident else "-"
            reason = "malformed DNS packet"
            if self.addon.refusals.admit(agent, remote, "dns", reason):
                try:
                    self.addon.audit.write(
                        event="decision", remote_addr=remote, agent=agent, mode="dns", host="",
                        method=None, path=None, action="deny", rule=None, rejected_by=reason,
                        status_code=None, duration_ms=round((time.monotonic() - start) * 1000, 3),
                        request_transforms=[])
                except (OSError, ValueError) as e:
                    log.error("audit write failed (%s)", getattr(e, "strerror", None) or e)
            return None
        cfg = rt.config.dns
        q = msg.question
        name = normalize_host(q.name) if q else ""
        qtype = types.to_str(q.type) if q else "-"
        ident = rt.policy.identify(remote)
        rule, answers, rcode = None, [], response_codes.REFUSED
        if q is None or msg.query is False or len(msg.questions) != 1:
            rcode = response_codes.FORMERR
        elif q.type not in (types.A, types.AAAA):
            rcode = response_codes.REFUSED if ident is None else response_codes.NOERROR
            rule = None
        elif ident is None:
            rcode = response_codes.REFUSED
        elif parse_ip_literal(name) is None and (grants := ident.allow.host_ports(name, None)):
            # allowed names lead to the proxy, whatever their real address is
            rcode, rule = response_codes.NOERROR, f"dns/{grants[0].label}"
            answers = _records(q, [cfg.proxy_ip])
        elif name in rt.resolver.records:
            rcode, rule = response_codes.NOERROR, "dns/records"
            answers = _records(q, rt.resolver.records[name])
        elif name in {normalize_host(n) for n in cfg.passthrough}:
            rcode, rule = response_codes.NOERROR, "dns/passthrough"
        action = "allow" if rule else "deny"
        agent = ident.name if ident else "-"
        try:  # the decision is recorded before it is acted on; unrecorded means refused
            # over the agent's audit budget, it is counted in its next summary line instead
            if self.addon.refusals.admit(agent, remote, "dns", f"{qtype} {name}: {rule or 'name not allowed'}"):
                self.addon.audit.write(
                    event="decision", remote_addr=remote, agent=agent, mode="dns",
                    host=name, method=qtype, path=None, action=action, rule=rule,
                    rejected_by=None if rule else "name not allowed", status_code=rcode,
                    duration_ms=round((time.monotonic() - start) * 1000, 3), request_transforms=[])
        except (OSError, ValueError) as e:  # ValueError: stdout closed under us
            log.error("audit write failed (%s); DNS query refused", getattr(e, "strerror", None) or e)
            return msg.fail(response_codes.REFUSED).packed
        if rule == "dns/passthrough":
            answers = await _passthrough(q)
        resp = msg.succeed(answers) if rcode == response_codes.NOERROR else msg.fail(rcode)
        return resp.packed


def _records(q, values: list[str]) -> list:
    out = []
    for v in values:
        ip = ipaddress.ip_address(v)
        if q.type == types.A and ip.version == 4:
            out.append(dns.ResourceRecord.A(q.name, ip, ttl=TTL))
        elif q.type == types.AAAA and ip.version == 6:
            out.append(dns.ResourceRecord.AAAA(q.name, ip, ttl=TTL))
    return out


async def _passthrough(q) -> list:
    family = socket.AF_INET if q.type == types.A else socket.AF_INET6
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(q.name, None, family=family, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return _records(q, sorted({i[4][0] for i in infos}))


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, answerer: DnsAnswerer) -> None:
        self.answerer = answerer

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        asyncio.ensure_future(self._reply(data, addr))

    async def _reply(self, data: bytes, addr) -> None:
        out = await self.answerer.answer(data, addr[0])
        if out is not None:
            self.transport.sendto(out, addr)


async def _tcp(answerer: DnsAnswerer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    remote = writer.get_extra_info("peername")[0]
    try:
        while True:
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))[0]
            out = await answerer.answer(await asyncio.wait_for(reader.readexactly(size), 10), remote)
            if out is None:
                break
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def start(listen: str, addon) -> list:
    host, port = parse_listen(listen)
    answerer = DnsAnswerer(addon)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(answerer), local_addr=(host, port))
    server = await asyncio.start_server(lambda r, w: _tcp(answerer, r, w), host, port)
    return [transport, server]
