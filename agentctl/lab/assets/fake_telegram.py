#!/usr/bin/env python3
"""A fake Telegram Bot API for the lab internet and tests: the agent's side speaks the real
wire format, the test's side plays the operator.

Standard library only (it runs inside the lab image, like lab_internet.py).

Bot side, as python-telegram-bot 22.6 (the `hermes-agent[messaging]` pin) calls it:
`POST {base_url}{token}/{method}` (telegram/_bot.py `_post`; Hermes 0.19.0 sets
`base_url` from its platform config `extra.base_url`, plugins/platforms/telegram/adapter.py
`connect`), parameters form-encoded with every non-string value JSON-encoded
(telegram/request/_requestdata.py `json_parameters`), answered `{"ok": true, "result": ...}`.
Served: getMe, getUpdates (long poll on `timeout`, `offset` acknowledges), sendMessage,
editMessageText, editMessageReplyMarkup, answerCallbackQuery, deleteWebhook, and any
other method with `true` (setMyCommands, sendChatAction, ...), each recorded.

Operator side (JSON over plain HTTP, for the test only):
  POST /_operator/send   {"text", "user_id"?, "chat_id"?}  a private message from the operator
  POST /_operator/press  {"message_id", "data", "user_id"?}  press an inline button of a bot
                         message (Hermes' approval prompt: callback data "ea:once:N",
                         "ea:deny:N", ... adapter.py `send_exec_approval`)
  GET  /_operator/sent   every message the bot sent or edited, oldest first
  GET  /_operator/calls  every Bot API call (method, token SHA-256, placeholder flag)

With --token, a call whose path token differs gets 401 as Telegram answers it; the log
holds the token's SHA-256 and whether it equals --placeholder, never the token.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

import fake_service

ARGS: argparse.Namespace
BOT = {"id": 700000001, "is_bot": True, "first_name": "Hermes", "username": "lab_hermes_bot",
       "can_join_groups": False, "can_read_all_group_messages": False, "supports_inline_queries": False}


class State:
    """Updates waiting for getUpdates, and everything the bot did."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.updates: list[dict] = []
        self.update_ids = itertools.count(1)
        self.message_ids = itertools.count(1)
        self.messages: dict[int, dict] = {}   # message_id -> the bot's message as last edited
        self.sent: list[dict] = []            # sendMessage/edit* calls, in order
        self.calls: list[dict] = []

    def push(self, update: dict) -> int:
        with self.cond:
            update_id = next(self.update_ids)
            self.updates.append({"update_id": update_id, **update})
            self.cond.notify_all()
            return update_id

    def take(self, offset: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.cond:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]  # offset acknowledges
            while not self.updates and (left := deadline - time.monotonic()) > 0:
                self.cond.wait(left)
            return list(self.updates)


STATE = State()


def record(**fields) -> None:
    line = json.dumps({"time": time.time(), "server": "fake-telegram", **fields}, sort_keys=True)
    with STATE.cond, open(ARGS.log, "a") as fh:
        fh.write(line + "\n")


def operator(user_id: int) -> dict:
    return {"id": user_id, "is_bot": False, "first_name": "Operator", "username": f"op{user_id}"}


def private_chat(chat_id: int) -> dict:
    return {"id": chat_id, "type": "private", "first_name": "Operator"}


def params(raw: bytes, ctype: str) -> dict:
    """PTB's form-encoded parameters (strings raw, everything else JSON), or a JSON body."""
    if ctype.startswith("application/json"):
        return json.loads(raw or b"{}")
    if ctype.startswith("multipart/"):
        return {}  # media uploads: recorded, not parsed
    out = {}
    for key, value in urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True):
        try:
            out[key] = json.loads(value) if value[:1] in "{[" or value in ("true", "false") else value
        except ValueError:
            out[key] = value
    return out


def bot_message(p: dict, message_id: int | None = None) -> dict:
    chat_id = int(p.get("chat_id", 0))
    msg = {"message_id": message_id or next(STATE.message_ids), "date": int(time.time()),
           "chat": private_chat(chat_id), "from": BOT, "text": p.get("text", "")}
    if p.get("reply_markup"):
        msg["reply_markup"] = p["reply_markup"]
    return msg


def api(method: str, p: dict):
    """The result of one Bot API call, or raises KeyError for an unknown message."""
    if method == "getMe":
        return BOT
    if method == "getUpdates":
        return STATE.take(int(p.get("offset") or 0), min(float(p.get("timeout") or 0), 30.0))
    if method == "sendMessage":
        msg = bot_message(p)
        with STATE.cond:
            STATE.messages[msg["message_id"]] = msg
            STATE.sent.append({"method": method, "message_id": msg["message_id"], "chat_id": msg["chat"]["id"],
                               "text": msg["text"], "reply_markup": msg.get("reply_markup"), "time": time.time()})
        return msg
    if method in ("editMessageText", "editMessageReplyMarkup"):
        message_id = int(p.get("message_id") or 0)
        with STATE.cond:
            msg = dict(STATE.messages[message_id])
            if method == "editMessageText":
                msg["text"] = p.get("text", "")
            if p.get("reply_markup"):
                msg["reply_markup"] = p["reply_markup"]
            else:
                msg.pop("reply_markup", None)
            STATE.messages[message_id] = msg
            STATE.sent.append({"method": method, "message_id": message_id, "chat_id": msg["chat"]["id"],
                               "text": msg["text"], "reply_markup": msg.get("reply_markup"), "time": time.time()})
        return msg
    if method == "getMyCommands":
        return []
    return True  # deleteWebhook, setMyCommands, sendChatAction, answerCallbackQuery, ...


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-telegram"

    def log_message(self, *_args) -> None:  # the JSON log is the record
        pass

    def _json(self, status: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        self._dispatch(b"")

    def do_POST(self) -> None:
        self._dispatch(self._body())

    def _dispatch(self, raw: bytes) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/_operator/"):
            return self._operator(path[len("/_operator/"):], raw)
        parts = path.split("/")
        if len(parts) != 3 or not parts[1].startswith("bot"):
            record(kind="http", method=self.command, path=path, status=404)
            return self._json(404, {"ok": False, "error_code": 404, "description": "Not Found"})
        token, method = parts[1][3:], parts[2]
        p = params(raw, self.headers.get("Content-Type", ""))
        if self.command == "GET":
            p.update(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query)))
        call = {"method": method, "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                "token_is_placeholder": bool(ARGS.placeholder) and token == ARGS.placeholder,
                "client": self.client_address[0], "time": time.time()}
        if ARGS.token and token != ARGS.token:
            record(kind="bot", status=401, **call)
            return self._json(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        if method == "agentctlReflect":  # not Telegram's: a server that echoes the URL it got
            record(kind="bot", status=302, **call)
            body = json.dumps({"ok": False, "description": f"moved: {self.path}"}).encode()
            self.send_response(302)
            self.send_header("Location", f"https://api.telegram.org{self.path}")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        try:
            result = api(method, p)
        except (KeyError, ValueError) as exc:
            record(kind="bot", status=400, error=repr(exc), **call)
            return self._json(400, {"ok": False, "error_code": 400, "description": f"Bad Request: {exc!r}"})
        if method != "getUpdates" or result:  # empty long polls would flood the log
            record(kind="bot", status=200, params={k: v for k, v in p.items() if k != "text"}, **call)
        with STATE.cond:
            STATE.calls.append({**call, "params": p})
        self._json(200, {"ok": True, "result": result})

    def _operator(self, verb: str, raw: bytes) -> None:
        if verb == "sent":
            with STATE.cond:
                return self._json(200, list(STATE.sent))
        if verb == "calls":
            with STATE.cond:
                return self._json(200, list(STATE.calls))
        body = json.loads(raw or b"{}")
        user_id = int(body.get("user_id", ARGS.operator_id))
        chat_id = int(body.get("chat_id", user_id))
        if verb == "send":
            message_id = next(STATE.message_ids)
            update_id = STATE.push({"message": {"message_id": message_id, "date": int(time.time()),
                                                "chat": private_chat(chat_id), "from": operator(user_id),
                                                "text": body["text"]}})
            record(kind="operator", verb=verb, update_id=update_id, user_id=user_id)
            return self._json(200, {"update_id": update_id, "message_id": message_id})
        if verb == "press":
            with STATE.cond:
                msg = STATE.messages.get(int(body["message_id"]))
            if msg is None:
                return self._json(404, {"error": "no such bot message"})
            update_id = STATE.push({"callback_query": {"id": f"cq{next(STATE.message_ids)}", "from": operator(user_id),
                                                       "chat_instance": "lab", "message": msg,
                                                       "data": body["data"]}})
            record(kind="operator", verb=verb, update_id=update_id, user_id=user_id, data=body["data"])
            return self._json(200, {"update_id": update_id})
        self._json(404, {"error": f"unknown operator verb {verb}"})


def main(argv: list[str] | None = None) -> int:
    global ARGS
    p = fake_service.parser()
    p.add_argument("--token", default="", help="the only bot token accepted (default: any)")
    p.add_argument("--placeholder", default="", help="the token the agent host holds; flagged if it arrives")
    p.add_argument("--operator-id", type=int, default=424242, help="the operator's Telegram user id")
    ARGS = p.parse_args(argv)
    return fake_service.serve(ARGS, Handler, record)


if __name__ == "__main__":
    sys.exit(main())
