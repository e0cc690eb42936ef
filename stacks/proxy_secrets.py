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


def _digests(files: list[dict]) -> dict[str, str]:
    return {f["path"]: hashlib.sha256(f"{f['owner']}\0{f['content']}".encode()).hexdigest() for f in files}


class ProxySecretsProvider(ResourceProvider):
    def _push(self, props: dict[str, Any], pinned: str | None) -> dict[str, Any]:
        files = [secrets_push.PushFile(f["path"], f["content"].encode(), f["owner"]) for f in props["files"]]
        fingerprint = secrets_push.push_files(
            props["host"], files, user=props["user"], port=int(props.get("port", 22)),
            key_filename=os.environ.get("AGENTCTL_SSH_KEY"), expected_host_key=pinned, after=props.get("after"))
        return {"host": props["host"], "serverId": props["serverId"], "hostKey": fingerprint,
                "paths": sorted(f.path for f in files), "digests": _digests(props["files"])}

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = self._push(props, None)
        return CreateResult(id_=f"{props['host']}:{outs['hostKey']}", outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in REPLACE_ON if olds.get(k) != news.get(k)]
        changed = bool(replaces) or olds.get("digests") != _digests(news["files"]) or olds.get("after") != news.get("after")
        return DiffResult(changes=changed, replaces=replaces, delete_before_replace=True)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self._push(news, olds.get("hostKey")))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # The files go with the server; a stack that keeps the server but drops a secret
        # overwrites the set on the next update instead.
        return None


class ProxySecrets(pulumi.dynamic.Resource, module="agentctl", name="ProxySecrets"):
    """files: [{path, owner, content}] with content a secret Output."""

    def __init__(self, name: str, *, host: pulumi.Input[str], server_id: pulumi.Input[str], user: str,
                 files: list[dict], after: str | None = None, opts: pulumi.ResourceOptions | None = None):
        props = {"host": host, "serverId": server_id, "user": user, "port": 22, "files": files, "after": after,
                 "hostKey": None, "paths": None, "digests": None}
        super().__init__(ProxySecretsProvider(), name, props,
                         pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                             additional_secret_outputs=["files", "digests"])))
