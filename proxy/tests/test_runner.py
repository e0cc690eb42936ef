"""runner.py: the addon chain a request passes, and startup errors still stopping the proxy.

Once the proxy runs, the chain holds only the addons that serve requests, as many as a
minimal mitmproxy, under mitmproxy's own AddonManager.
"""

from __future__ import annotations

import pytest
import asyncio
import socket
import subprocess
import sys

import yaml
from conftest import base_config, free_port

from agentctl_proxy.config import load_config
from mitmproxy.addonmanager import AddonManager
from agentctl_proxy.runner import ProxyApp


def _config(pki, tmp_path, **extra):
    cfg = base_config(pki, tmp_path, **extra)
    cfg["dns"] = {"listen": f"127.0.0.1:{free_port()}", "proxy_ip": "127.0.0.1"}
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return cfg, path


async def _healthz(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data


def test_only_request_serving_addons_stay_in_the_chain(pki, tmp_path):
    cfg, path = _config(pki, tmp_path)
    app = ProxyApp(str(path), load_config(str(path)))

    async def main():
        run = asyncio.create_task(app.run())
        for _ in range(400):  # until startup is over: ErrorCheck has left
            await asyncio.sleep(0.05)
            if app.master is not None and app.master.addons.get("errorcheck") is None:
                break
        try:
            chain = [type(a).__name__ for a in app.master.addons.chain]
            assert chain == ["Core", "Proxyserver", "EgressAddon", "TlsConfig"]
            assert type(app.master.addons) is AddonManager  # mitmproxy's own dispatch
            assert len(app.extra_servers) == 3  # DNS over UDP and TCP, and health: started
            assert b"200 OK" in await _healthz(int(cfg["proxy"]["health_listen"].rsplit(":", 1)[1]))
        finally:
            app.master.shutdown()
            await asyncio.wait_for(run, 10)

    asyncio.run(main())


@pytest.mark.slow  # over 5 s: not in the fast tier
def test_an_error_while_starting_the_listeners_still_stops_the_proxy(pki, tmp_path):
    """ErrorCheck leaves the chain only after its last startup check: a DNS port that is
    taken (an error in the running phase) still ends the proxy with exit 1."""
    cfg, path = _config(pki, tmp_path)
    host, port = cfg["dns"]["listen"].rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((host, int(port)))
        p = subprocess.run([sys.executable, "-m", "agentctl_proxy", "run", "--config", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert "Error logged during startup" in p.stderr


def test_each_hook_lives_in_exactly_one_concern():
    """EgressAddon composes single-concern classes (addon.py); none may shadow another's
    hook, or that hook would silently never run."""
    import inspect as _inspect

    from mitmproxy import hooks

    from agentctl_proxy.addon import EgressAddon
    from agentctl_proxy.internals import ClientProtocolErrorHook, RequestRefusedHook

    names = set(hooks.all_hooks) | {ClientProtocolErrorHook.name, RequestRefusedHook.name}
    owners: dict[str, list[str]] = {}
    for cls in EgressAddon.__mro__[1:]:
        for name, member in vars(cls).items():
            if name in names and _inspect.isfunction(member):
                owners.setdefault(name, []).append(cls.__name__)
    assert all(len(v) == 1 for v in owners.values()), owners
    assert {"requestheaders", "responseheaders", "client_connected", "server_connect", "next_layer"} <= set(owners)
