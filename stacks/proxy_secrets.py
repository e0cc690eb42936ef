"""A dynamic resource that pushes the proxy's secret files over SSH after it boots.

It runs inside the Pulumi program (no provider plugin). The SSH key comes from the
operator's ssh-agent or ~/.ssh, or the file named by AGENTCTL_SSH_KEY, at apply time:
never from config or state. State keeps the contents as Pulumi secrets, the host key
pinned on first use, and (secret) digests to detect changes.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from agentctl import secrets_push

# A rebuilt server has a new host key and an empty disk: push again from scratch.
REPLACE_ON = ("serverId", "host")


def _digests(props: dict[str, Any]) -> dict[str, str]:
    contents = {f["path"]: f["content"] for f in props["files"]}
    return {m["path"]: hashlib.sha256(f"{m['owner']}\0{m['mode']}\0{contents[m['path']]}".encode()).hexdigest()
            for m in props["manifest"]}


def push_list(props: dict[str, Any]) -> list[secrets_push.PushFile]:
    """The manifest (path, owner, mode: plain, visible in plans) joined with the secret
    contents by path: what is pushed is exactly what the manifest says."""
    contents = {f["path"]: f["content"] for f in props["files"]}
    if set(contents) != {m["path"] for m in props["manifest"]}:
        raise secrets_push.SecretPushError("secret files and their manifest disagree; refusing to push")
    return [secrets_push.PushFile(m["path"], contents[m["path"]].encode(), m["owner"], int(m["mode"], 8))
            for m in props["manifest"]]


class ProxySecretsProvider(ResourceProvider):
    def _push(self, props: dict[str, Any], pinned: str | None) -> dict[str, Any]:
        files = push_list(props)
        fingerprint = secrets_push.push_files(
            props["host"], files, user=props["user"], port=int(props.get("port", 22)),
            key_filename=os.environ.get("AGENTCTL_SSH_KEY"), expected_host_key=pinned, after=props.get("after"))
        return {"host": props["host"], "serverId": props["serverId"], "hostKey": fingerprint,
                "paths": sorted(f.path for f in files), "digests": _digests(props)}

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._push(props, None)
        return CreateResult(id_=f"{props['host']}:{outs['hostKey']}", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in REPLACE_ON if olds.get(k) != news.get(k)]
        changed = bool(replaces) or olds.get("digests") != _digests(news) or olds.get("after") != news.get("after")
        return DiffResult(changes=changed, replaces=replaces, delete_before_replace=True)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._push(news, olds.get("hostKey")))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # The files go with the server; a stack that keeps the server but drops a secret
        # overwrites the set on the next update instead.
        return None


class ProxySecrets(pulumi.dynamic.Resource, module="agentctl", name="ProxySecrets"):
    """files: [{path, owner, mode ("0600"), content}] with content a secret Output. The
    manifest (everything but the contents) stays in plain sight in plans and state."""

    def __init__(self, name: str, *, host: pulumi.Input[str], server_id: pulumi.Input[str], user: str,
                 files: list[dict], after: str | None = None, opts: pulumi.ResourceOptions | None = None):
        manifest = [{"path": f["path"], "owner": f["owner"], "mode": f["mode"]} for f in files]
        props = {"host": host, "serverId": server_id, "user": user, "port": 22, "manifest": manifest,
                 "files": [{"path": f["path"], "content": f["content"]} for f in files], "after": after,
                 "hostKey": None, "paths": None, "digests": None}
        super().__init__(ProxySecretsProvider(), name, props,
                         pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                             additional_secret_outputs=["files", "digests"])))
