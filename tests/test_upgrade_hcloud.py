"""The Hetzner backend, driven by the real hcloud client against tests/fake_hcloud.py."""
from __future__ import annotations

import time

import pytest
from hcloud import Client
from hcloud.actions.domain import ActionFailedException

from agentctl.upgrade import engine
from agentctl.upgrade.backends.hcloud import PROJECT_LABEL, HcloudBackend, HcloudError
from tests.fake_hcloud import FakeHcloud

STACK = "prod"
ROLE = {"agentctl-stack": STACK, "agentctl-role": "agent-scout"}


@pytest.fixture
def api():
    with FakeHcloud() as fake:
        yield fake


def backend(api: FakeHcloud) -> HcloudBackend:
    client = Client(token="test-token", api_endpoint=api.endpoint, poll_interval=0.01)
    return HcloudBackend(client, STACK, poll=0.01, max_polls=50)


def tags(run_id: str = "20261205T091327Z-abcdef") -> dict[str, str]:
    return engine.snapshot_tags(STACK, "scout", "v2026.11.0", "v2026.12.0", run_id)


def test_snapshot_is_a_labelled_image_waited_on_until_available(api):
    sid = api.add_server("prod-agent-scout", ROLE, {"/home/agentuser/notes": "before"})
    b = backend(api)
    snap = b.snapshot("scout", tags())
    image = api.images[int(snap)]
    assert image["status"] == "creating" and image["type"] == "snapshot" and image["disk"] == api.servers[sid]["disk"]
    assert image["labels"] == {PROJECT_LABEL: engine.PROJECT, "agentctl-stack": STACK, "agentctl-host": "scout",
                               "agentctl-from": "v2026.11.0", "agentctl-to": "v2026.12.0",
                               "agentctl-time": "20261205T091327Z", "agentctl-run-id": "20261205T091327Z-abcdef"}
    b.wait(snap)
    assert image["status"] == "available"
    assert sum(1 for m, p in api.requests if m == "GET" and p.startswith("/v1/actions/")) >= 2  # it polled
    [listed] = b.list_snapshots("scout")
    assert (listed.id, listed.run_id) == (snap, "20261205T091327Z-abcdef")


def test_a_resumed_wait_has_no_action_and_waits_on_the_image(api):
    api.add_server("prod-agent-scout", ROLE, {})
    snap = backend(api).snapshot("scout", tags())
    api.images[int(snap)]["status"] = "available"
    backend(api).wait(snap)  # a new process: no action in hand
    api.images[int(snap)]["status"] = "creating"
    with pytest.raises(HcloudError, match="still creating"):
        backend(api).wait(snap)


def test_a_failed_create_image_action_raises(api):
    api.add_server("prod-agent-scout", ROLE, {})
    api.fail.add("create_image")
    b = backend(api)
    snap = b.snapshot("scout", tags())
    with pytest.raises(ActionFailedException):
        b.wait(snap)


def test_rollback_rebuilds_the_server_from_the_snapshot(api):
    sid = api.add_server("prod-agent-scout", ROLE, {"notes": "before", "version": "v2026.11.0"})
    b = backend(api)
    snap = b.snapshot("scout", tags())
    b.wait(snap)
    api.servers[sid]["disk"] = {"notes": "before", "version": "v2026.12.0", "broken": True}
    b.restore("scout", snap)
    assert api.servers[sid]["disk"] == {"notes": "before", "version": "v2026.11.0"}
    assert ("POST", f"/v1/servers/{sid}/actions/rebuild") in api.requests


def test_a_failed_rebuild_raises_and_changes_nothing(api):
    sid = api.add_server("prod-agent-scout", ROLE, {"v": 1})
    b = backend(api)
    snap = b.snapshot("scout", tags())
    b.wait(snap)
    api.servers[sid]["disk"] = {"v": 2}
    api.fail.add("rebuild_server")
    with pytest.raises(ActionFailedException):
        b.restore("scout", snap)
    assert api.servers[sid]["disk"] == {"v": 2}


def test_a_429_is_retried_by_the_client(api):
    api.add_server("prod-agent-scout", ROLE, {})
    api.rate_limit = 1
    started = time.monotonic()
    b = backend(api)
    b.snapshot("scout", tags())
    server_lookups = [p for m, p in api.requests if m == "GET" and p.startswith("/v1/servers?")]
    assert len(server_lookups) == 2 and len(api.images) == 1  # answered 429 first, then retried
    assert api.rate_limit == 0 and time.monotonic() - started < 10


def test_unknown_server_is_an_error(api):
    api.add_server("prod-agent-other", {"agentctl-stack": STACK, "agentctl-role": "agent-other"}, {})
    with pytest.raises(HcloudError, match="0 servers labelled agentctl-stack=prod, agentctl-role=agent-scout"):
        backend(api).server("scout")


def test_retention_sees_and_deletes_only_the_projects_snapshots(api):
    api.add_server("prod-agent-scout", ROLE, {})
    b = backend(api)
    ours = [str(api.add_image({PROJECT_LABEL: engine.PROJECT, "agentctl-stack": STACK, "agentctl-host": "scout",
                               "agentctl-run-id": f"r{i}"}, created=f"2026-12-0{i + 1}T00:00:00+00:00"))
            for i in range(3)]
    foreign = str(api.add_image({"agentctl-stack": STACK, "agentctl-host": "scout"}))
    other_stack = str(api.add_image({PROJECT_LABEL: engine.PROJECT, "agentctl-stack": "staging",
                                     "agentctl-host": "scout"}))
    listed = b.list_snapshots("scout")
    assert {s.id for s in listed} == set(ours)
    assert [s.id for s in engine.expired(listed, 2)] == [ours[0]]
    assert any("label_selector=" in p for m, p in api.requests if p.startswith("/v1/images?"))
    for other in (foreign, other_stack):
        with pytest.raises(HcloudError, match="refusing to delete"):
            b.delete(other)
    b.delete(ours[0])
    assert set(map(str, api.images)) == {ours[1], ours[2], foreign, other_stack}
