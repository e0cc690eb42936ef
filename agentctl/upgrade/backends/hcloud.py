"""Hetzner Cloud: a snapshot image of the agent server; rollback rebuilds it from the image.

Through hcloud-python's public client: ServersClient.create_image(type="snapshot",
labels=...), BoundAction.wait_until_finished (it polls GET /actions/{id} and raises
ActionFailedException on status "error"), ServersClient.rebuild, ImagesClient.get_all
(label_selector) and delete. The client itself retries rate limits (code
rate_limit_exceeded) with backoff (hcloud/_client.py `_retry_policy`).

A rebuild rewrites the disk and keeps the server, its private network address and
its Primary IP (none on an agent host), so nothing outside the server changes. The
server is found by the labels the Pulumi program gives it
(stacks/hcloud_deployment.py `_labels`: agentctl-stack, agentctl-role = agent-<name>).
Every snapshot carries `agentctl-managed-by`; listing and deleting require it.
"""
from __future__ import annotations

import time
from typing import Any

from hcloud import Client
from hcloud.actions.client import BoundAction
from hcloud.images import Image

from agentctl.errors import AgentctlError
from agentctl.upgrade.engine import PROJECT, Snapshot

PROJECT_LABEL = "agentctl-managed-by"
PREFIX = "agentctl-"


class HcloudError(AgentctlError):
    exit_code = 1


class HcloudBackend:
    def __init__(self, client: Client, stack: str, poll: float = 2.0, max_polls: int = 1800):
        self.client, self.stack, self.poll, self.max_polls = client, stack, poll, max_polls
        self._actions: dict[str, BoundAction] = {}

    def server(self, host: str) -> Any:
        found = self.client.servers.get_all(label_selector=f"agentctl-stack={self.stack},agentctl-role=agent-{host}")
        if len(found) != 1:
            raise HcloudError(f"hcloud: {len(found)} servers labelled agentctl-stack={self.stack}, "
                              f"agentctl-role=agent-{host}; expected exactly one")
        return found[0]

    def _selector(self, host: str) -> str:
        return f"{PROJECT_LABEL}={PROJECT},agentctl-stack={self.stack},agentctl-host={host}"

    def snapshot(self, host: str, tags: dict[str, str]) -> str:
        server = self.server(host)
        labels = {PROJECT_LABEL: PROJECT, **{PREFIX + k: v for k, v in tags.items()}}
        made = server.create_image(description=f"agentctl snapshot-upgrade {host} {tags['from']} -> {tags['to']}",
                                   type="snapshot", labels=labels)
        self._actions[str(made.image.id)] = made.action
        return str(made.image.id)

    def wait(self, snapshot_id: str) -> None:
        action = self._actions.pop(snapshot_id, None)
        if action is not None:
            action.wait_until_finished(max_retries=self.max_polls)  # raises ActionFailedException
        # Also after a resume (no action in hand): the image itself must be available.
        for _ in range(self.max_polls):
            status = self.client.images.get_by_id(int(snapshot_id)).status
            if status == "available":
                return
            if status not in ("creating",):
                raise HcloudError(f"hcloud: image {snapshot_id} is {status}, not available")
            time.sleep(self.poll)
        raise HcloudError(f"hcloud: image {snapshot_id} still creating; run --resume")

    def restore(self, host: str, snapshot_id: str) -> None:
        server = self.server(host)
        rebuilt = self.client.servers.rebuild(server, image=Image(id=int(snapshot_id)))
        rebuilt.action.wait_until_finished(max_retries=self.max_polls)

    def list_snapshots(self, host: str) -> list[Snapshot]:
        out = []
        for image in self.client.images.get_all(type="snapshot", label_selector=self._selector(host)):
            labels = image.labels or {}
            if (labels.get(PROJECT_LABEL), labels.get("agentctl-stack"), labels.get("agentctl-host")) != \
                    (PROJECT, self.stack, host):
                continue  # the selector again, here: retention must never see anything else
            out.append(Snapshot(str(image.id), host, labels.get("agentctl-run-id", ""),
                                image.created.strftime("%Y%m%dT%H%M%SZ")))
        return out

    def delete(self, snapshot_id: str) -> None:
        image = self.client.images.get_by_id(int(snapshot_id))
        labels = image.labels or {}
        if image.type != "snapshot" or labels.get(PROJECT_LABEL) != PROJECT or labels.get("agentctl-stack") != self.stack:
            raise HcloudError(f"hcloud: refusing to delete image {snapshot_id}: it is not a snapshot labelled "
                              f"{PROJECT_LABEL}={PROJECT}, agentctl-stack={self.stack}")
        self.client.images.delete(image)
