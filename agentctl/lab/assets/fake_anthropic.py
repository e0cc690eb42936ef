#!/usr/bin/env python3
"""A scripted model API in the Anthropic Messages wire format, for the lab internet and tests.

Standard library only (it runs inside the lab image, like lab_internet.py). Hermes'
`anthropic` provider calls it through the official SDK (anthropic 0.87, the
`hermes-agent[anthropic]` pin): `client.messages.stream(...)` (Hermes 0.19.0
agent/chat_completion_helpers.py), i.e. POST /v1/messages with "stream": true, answered
with the SDK's server-sent events (anthropic/types/raw_message_stream_event.py:
message_start, content_block_start/delta/stop, message_delta, message_stop). A request
without "stream" gets one Message JSON (anthropic/types/message.py).

The script is the operator's own message, so a test decides what the "model" does:
  TOOL <name> <json input>   answer with one tool_use block calling tool <name>
                             (e.g. TOOL terminal {"command": "touch /tmp/x"});
                             the tool must be among the request's `tools`, else the
                             answer is the text "NO TOOL <name>"
  anything else              answer with the text "ECHO: <the message's last 500
                             characters>" (Hermes may append context to the operator's text)
When the conversation's last message carries a tool_result, the answer is the text
"RESULT: <the tool result's text, cut to 300 characters>", so the result (or Hermes'
"BLOCKED: ..." refusal) reaches the operator.

Every request is one JSON line in --log: method, path, the header names, SHA-256 of
x-api-key and Authorization (never the values) and whether they equal --placeholder
(so a test proves the proxy injected the real key and the placeholder never left the
host), the model, whether it streamed, the tool names offered, and what was answered.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

import fake_service

LOCK = threading.Lock()
IDS = itertools.count(1)
ARGS: argparse.Namespace
TOOL_RE = re.compile(r"TOOL\s+([A-Za-z0-9_\-]+)\s+(\{.*\})", re.S)


def record(**fields) -> None:
    line = json.dumps({"time": time.time(), "server": "fake-anthropic", **fields}, sort_keys=True)
    with LOCK, open(ARGS.log, "a") as fh:
        fh.write(line + "\n")


def digest(value: str | None) -> str | None:
    return hashlib.sha256(value.encode()).hexdigest() if value else None


def block_text(content) -> str:
    """The text of a message's content: a string, or text/tool_result blocks."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif block.get("type") == "tool_result":
            parts.append(block_text(block.get("content")))
    return "\n".join(parts)


def decide(request: dict) -> list[dict]:
    """The content blocks to answer with, from the conversation's last message."""
    messages = request.get("messages") or []
    last = messages[-1] if messages else {"content": ""}
    content = last.get("content")
    if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
        return [{"type": "text", "text": "RESULT: " + block_text(content)[:300]}]
    text = block_text(content)
    m = TOOL_RE.search(text)
    if m is None:
        return [{"type": "text", "text": "ECHO: " + text.strip()[-500:]}]
    name, raw = m.group(1), m.group(2)
    offered = {t.get("name") for t in request.get("tools") or [] if isinstance(t, dict)}
    if name not in offered:
        return [{"type": "text", "text": f"NO TOOL {name}"}]
    return [{"type": "tool_use", "id": f"toolu_fake{next(IDS):06d}", "name": name, "input": json.loads(raw)}]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-anthropic"

    def log_message(self, *_args) -> None:  # the JSON log is the record
        pass

    def _note(self, status: int, **fields) -> None:
        key, auth = self.headers.get("x-api-key"), self.headers.get("Authorization")
        record(method=self.command, path=self.path, status=status, client=self.client_address[0],
               header_names=sorted(k.lower() for k in self.headers.keys()),
               x_api_key_sha256=digest(key), authorization_sha256=digest(auth),
               x_api_key_is_placeholder=key == ARGS.placeholder if ARGS.placeholder else None,
               authorization_has_placeholder=bool(ARGS.placeholder and auth and ARGS.placeholder in auth),
               **fields)

    def _json(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("request-id", f"req_fake{next(IDS):06d}")
        self.end_headers()
        self.wfile.write(body)

    def _not_served(self) -> None:
        self._note(404)
        self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "fake: not served"}})

    def do_GET(self) -> None:  # model listings and other probes: not needed, recorded
        self._not_served()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0] != "/v1/messages":
            return self._not_served()
        try:
            request = json.loads(raw)
            blocks = decide(request)
        except (ValueError, TypeError) as exc:
            self._note(400, error=str(exc))
            return self._json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": str(exc)}})
        model = request.get("model", "fake-model")
        stop = "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn"
        self._note(200, model=model, stream=bool(request.get("stream")),
                   tools=sorted(t.get("name", "") for t in request.get("tools") or [] if isinstance(t, dict)),
                   answer=[{k: b[k] for k in ("type", "name", "input", "text") if k in b} for b in blocks])
        if ARGS.latency_ms:
            time.sleep(ARGS.latency_ms / 1000)
        message = {"id": f"msg_fake{next(IDS):06d}", "type": "message", "role": "assistant", "model": model,
                   "content": blocks, "stop_reason": stop, "stop_sequence": None,
                   "usage": {"input_tokens": max(1, len(raw) // 4), "output_tokens": 8}}
        if not request.get("stream"):
            return self._json(200, message)
        self._stream(message)

    def _stream(self, message: dict) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()

        def event(name: str, data: dict) -> None:
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        start = {**message, "content": [], "stop_reason": None,
                 "usage": {"input_tokens": message["usage"]["input_tokens"], "output_tokens": 1}}
        event("message_start", {"type": "message_start", "message": start})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                event("content_block_start", {"type": "content_block_start", "index": index,
                                              "content_block": {"type": "text", "text": ""}})
                text = block["text"]
                for i in range(0, len(text), 40) or [0]:
                    event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                  "delta": {"type": "text_delta", "text": text[i:i + 40]}})
            else:
                event("content_block_start", {"type": "content_block_start", "index": index,
                                              "content_block": {"type": "tool_use", "id": block["id"],
                                                                "name": block["name"], "input": {}}})
                event("content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": {"type": "input_json_delta",
                                                        "partial_json": json.dumps(block["input"])}})
            event("content_block_stop", {"type": "content_block_stop", "index": index})
        event("message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                "usage": {"output_tokens": message["usage"]["output_tokens"]}})
        event("message_stop", {"type": "message_stop"})
        self.close_connection = True


def main(argv: list[str] | None = None) -> int:
    global ARGS
    p = fake_service.parser()
    p.add_argument("--placeholder", default="", help="the key the agent host holds; flagged if it arrives")
    p.add_argument("--latency-ms", type=int, default=0, help="the model's own latency per call")
    ARGS = p.parse_args(argv)
    return fake_service.serve(ARGS, Handler, record)


if __name__ == "__main__":
    sys.exit(main())
