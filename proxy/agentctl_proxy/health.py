"""GET /healthz -> 200 JSON. A separate loopback listener, not reachable by agents."""

from __future__ import annotations

import asyncio
import json
import time

from agentctl_proxy import __version__
from agentctl_proxy.config import parse_listen


async def start(listen: str, status) -> asyncio.AbstractServer:
    host, port = parse_listen(listen)
    started = time.monotonic()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1] == b"/healthz":
                body = json.dumps({"status": "ok", "version": __version__,
                                   "uptime_s": round(time.monotonic() - started, 1), **status()})
                head = "HTTP/1.1 200 OK"
            else:
                body, head = json.dumps({"error": "not found"}), "HTTP/1.1 404 Not Found"
            data = body.encode() + b"\n"
            writer.write(f"{head}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
                         f"connection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
