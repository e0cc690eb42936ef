"""A fake Hetzner Cloud API on loopback, for the real `hcloud` client (hcloud-python 2.x).

Only what snapshot-upgrade uses, in the shapes hcloud-python reads (its source, as
installed): `servers/client.py` ServersClient.create_image (POST
/servers/{id}/actions/create_image -> {"image", "action"}), .rebuild (POST
/servers/{id}/actions/rebuild {"image": id} -> {"action", "root_password"}),
.get_list (GET /servers?label_selector= -> {"servers", "meta": {"pagination"}});
`images/client.py` get_list (GET /images?type=&label_selector=), get_by_id,
delete (DELETE /images/{id}); `actions/client.py` BoundAction.wait_until_finished
(GET /actions/{id} until status != "running"; "error" raises ActionFailedException);
`_client.py` Client._read_response ({"error": {"code", "message"}}) and its retry
policy (code "rate_limit_exceeded" is retried with its own backoff: it does not read
Retry-After, which we send anyway as the real API does).

For validation (agentctl/hcloud_catalog.py, agentctl/stackcheck.py): GET /server_types
and /locations (server_types/client.py, locations/client.py get_all: paginated lists;
a server type's `locations[]` entries {id, name, deprecation, available, recommended},
server_types/domain.py ServerTypeLocation) and GET /ssh_keys?name=|fingerprint=
(ssh_keys/client.py get_by_name / get_by_fingerprint).

Actions run for `polls` GETs, then succeed, or fail when their command is in `fail`.
`rate_limit` answers that many next requests with 429. Disks are dicts, so a test can
see that a rebuild from a snapshot brings back what the snapshot held."""
from __future__ import annotations

import copy
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

NOW = "2026-12-05T09:00:00+00:00"


def matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, eq, value = term.partition("=")
        if eq and labels.get(key) != value:
            return False
        if not eq and key not in labels:
            return False
    return True


class FakeHcloud:
    def __init__(self) -> None:
        self.ids = itertools.count(1000)
        self.servers: dict[int, dict] = {}
        self.images: dict[int, dict] = {}
        self.actions: dict[int, dict] = {}
        self.polls = 2
        self.fail: set[str] = set()
        self.rate_limit = 0
        self.requests: list[tuple[str, str]] = []
        # what the project sees: add with add_location / add_server_type / add_ssh_key
        self.locations: list[dict] = []
        self.server_types: list[dict] = []
        self.ssh_keys: list[dict] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"api": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "FakeHcloud":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_server(self, name: str, labels: dict[str, str], disk: dict) -> int:
        sid = next(self.ids)
        self.servers[sid] = {"id": sid, "name": name, "status": "running", "created": NOW, "labels": labels,
                             "disk": disk}
        return sid

    def add_image(self, labels: dict[str, str], created: str = NOW, disk: dict | None = None) -> int:
        iid = next(self.ids)
        self.images[iid] = {"id": iid, "type": "snapshot", "status": "available", "name": None, "created": created,
                            "description": "", "labels": labels, "disk": disk or {}}
        return iid

    def add_location(self, name: str, network_zone: str) -> None:
        self.locations.append({"id": next(self.ids), "name": name, "description": name, "country": "DE",
                               "city": name, "latitude": 0.0, "longitude": 0.0, "network_zone": network_zone})

    def add_server_type(self, name: str, where: dict[str, dict | None]) -> None:
        """where: location name -> its deprecation ({announced, unavailable_after}) or None."""
        ids = {loc["name"]: loc["id"] for loc in self.locations}
        self.server_types.append({"id": next(self.ids), "name": name, "description": name, "cores": 2,
                                  "memory": 4.0, "disk": 40, "prices": [], "storage_type": "local",
                                  "cpu_type": "shared", "architecture": "x86", "deprecated": None,
                                  "deprecation": None, "locations": [
                                      {"id": ids[loc], "name": loc, "deprecation": dep, "available": True,
                                       "recommended": dep is None} for loc, dep in where.items()]})

    def add_ssh_key(self, name: str, fingerprint: str, public_key: str, labels: dict | None = None) -> int:
        kid = next(self.ids)
        self.ssh_keys.append({"id": kid, "name": name, "fingerprint": fingerprint, "public_key": public_key,
                              "labels": labels or {}, "created": NOW})
        return kid

    def _action(self, command: str, resources: list[dict], on_success) -> dict:
        aid = next(self.ids)
        self.actions[aid] = {"id": aid, "command": command, "status": "running", "progress": 0, "started": NOW,
                             "finished": None, "resources": resources, "error": None,
                             "_polls": self.polls, "_done": on_success, "_fail": command in self.fail}
        return self.actions[aid]

    def poll(self, aid: int) -> dict:
        action = self.actions[aid]
        if action["status"] == "running":
            action["_polls"] -= 1
            if action["_polls"] <= 0:
                if action["_fail"]:
                    action.update(status="error", error={"code": "action_failed", "message": "Action failed"})
                else:
                    action.update(status="success", progress=100)
                    action["_done"]()
                action["finished"] = NOW
        return action


def public(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if not k.startswith("_") and k != "disk"}


class _Handler(BaseHTTPRequestHandler):
    api: FakeHcloud

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: dict | None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": {"code": code, "message": message, "details": {}}}, headers)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        api = self.api
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        parts = url.path.strip("/").split("/")
        with api.lock:
            api.requests.append((method, self.path))
            if not self.headers.get("Authorization", "").startswith("Bearer "):
                return self._error(401, "unauthorized", "unable to authenticate")
            if api.rate_limit > 0:
                api.rate_limit -= 1
                return self._error(429, "rate_limit_exceeded", "limit of 3600 requests per hour reached",
                                   {"Retry-After": "1", "RateLimit-Remaining": "0"})
            return self._route(method, parts, query, body)

    def _page(self, key: str, items: list[dict]) -> None:
        self._send(200, {key: [public(i) for i in items], "meta": {"pagination": {
            "page": 1, "per_page": 50, "previous_page": None, "next_page": None, "last_page": 1,
            "total_entries": len(items)}}})

    def _route(self, method: str, parts: list[str], query: dict, body: dict) -> None:
        api = self.api
        if parts[0] != "v1":
            return self._error(404, "not_found", "no such path")
        parts = parts[1:]
        if parts == ["servers"] and method == "GET":
            sel = query.get("label_selector", "")
            return self._page("servers", [s for s in api.servers.values() if matches(s["labels"], sel)])
        if len(parts) >= 2 and parts[0] == "servers":
            server = api.servers.get(int(parts[1]))
            if server is None:
                return self._error(404, "not_found", "server not found")
            if len(parts) == 2 and method == "GET":
                return self._send(200, {"server": public(server)})
            if parts[2:] == ["actions", "create_image"] and method == "POST":
                if body.get("type") not in (None, "snapshot", "backup"):
                    return self._error(422, "invalid_input", "invalid type")
                iid = next(api.ids)
                image = {"id": iid, "type": body.get("type", "snapshot"), "status": "creating", "name": None,
                         "created": NOW, "description": body.get("description", ""),
                         "labels": body.get("labels", {}), "disk": copy.deepcopy(server["disk"])}
                api.images[iid] = image
                action = api._action("create_image", [{"id": server["id"], "type": "server"}],
                                     lambda: image.update(status="available"))
                return self._send(201, {"image": public(image), "action": public(action)})
            if parts[2:] == ["actions", "rebuild"] and method == "POST":
                image = api.images.get(int(body["image"])) if str(body.get("image", "")).isdigit() else None
                if image is None:
                    return self._error(422, "invalid_input", "image not found")
                action = api._action("rebuild_server", [{"id": server["id"], "type": "server"}],
                                     lambda: server.update(disk=copy.deepcopy(image["disk"])))
                return self._send(201, {"action": public(action), "root_password": None})
        if parts in (["locations"], ["server_types"]) and method == "GET":
            items = self.api.locations if parts == ["locations"] else self.api.server_types
            return self._page(parts[0], [i for i in items if query.get("name") in (None, i["name"])])
        if parts == ["ssh_keys"] and method == "GET":
            return self._page("ssh_keys", [k for k in api.ssh_keys if all(
                query.get(f) in (None, k[f]) for f in ("name", "fingerprint"))
                and matches(k["labels"], query.get("label_selector", ""))])
        if parts[:1] == ["actions"] and len(parts) == 2 and method == "GET":
            if int(parts[1]) not in api.actions:
                return self._error(404, "not_found", "action not found")
            return self._send(200, {"action": public(api.poll(int(parts[1])))})
        if parts == ["images"] and method == "GET":
            sel, typ = query.get("label_selector", ""), query.get("type")
            return self._page("images", [i for i in api.images.values()
                                         if matches(i["labels"], sel) and (typ is None or i["type"] == typ)])
        if parts[:1] == ["images"] and len(parts) == 2:
            image = api.images.get(int(parts[1]))
            if image is None:
                return self._error(404, "not_found", "image not found")
            if method == "GET":
                return self._send(200, {"image": public(image)})
            if method == "DELETE":
                del api.images[image["id"]]
                return self._send(204, None)
        return self._error(404, "not_found", f"{method} {'/'.join(parts)} is not served by the fake")
