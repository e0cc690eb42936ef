"""Listener clashes (schema/values.py listener_clash, the one rule for check, run and the
stack model): the same address and port twice, or a wildcard beside a specific address
on one port, is refused with one line before mitmproxy ever binds (which crashed with a
149-line OptionsError traceback, or a segfault, on the old code)."""

import socket
import subprocess
import sys

import pytest
import yaml

from agentctl_proxy.schema.values import listener_clash


@pytest.mark.parametrize("listeners,clash", [
    ([("tunnel", "10.0.1.10", 443), ("https", "10.0.1.10", 443)], "tunnel and https both listen on port 443"),
    ([("https", "0.0.0.0", 8443), ("tunnel", "127.0.0.1", 8443)],
     "https and tunnel both listen on port 8443 (every address and 127.0.0.1 overlap)"),
    ([("https", "::", 8443), ("tunnel", "127.0.0.1", 8443)], "(every address and 127.0.0.1 overlap)"),
    ([("https", "0.0.0.0", 53), ("dns", "0.0.0.0", 53)], "https and dns both listen on port 53"),
    ([("https", "0.0.0.0", 8443), ("tunnel", "::1", 8443)], None),  # 0.0.0.0 is IPv4 only
    ([("https", "10.0.1.10", 443), ("tunnel", "127.0.0.1", 443)], None),
    ([("https", "10.0.1.10", 443), ("http", "10.0.1.10", 80)], None),
])
def test_clash_rule(listeners, clash):
    found = listener_clash(listeners)
    assert (found is None) if clash is None else (clash in found and found.endswith(
        "; expected a different port or address for each listener"))


def _config(pki, proxy, dns=None):
    doc = {"proxy": proxy, "tls": {"ca_cert": pki["ca_cert"], "ca_key": pki["ca_key"]},
           "agents": [{"name": "scout", "sources": ["10.0.2.11/32"]}]}
    if dns:
        doc["dns"] = dns
    return yaml.safe_dump(doc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("proxy,dns,message", [
    ({"tunnel_listen": "127.0.0.1:PORT", "https_listen": "127.0.0.1:PORT"}, None,
     "proxy.tunnel_listen and proxy.https_listen both listen on port PORT"),
    ({"tunnel_listen": "127.0.0.1:PORT", "https_listen": "0.0.0.0:PORT"}, None,
     "proxy.tunnel_listen and proxy.https_listen both listen on port PORT (127.0.0.1 and every address overlap)"),
    ({"tunnel_listen": "127.0.0.1:PORT", "health_listen": ":PORT"}, None,
     "proxy.tunnel_listen and proxy.health_listen both listen on port PORT (127.0.0.1 and every address overlap)"),
    ({"tunnel_listen": "127.0.0.1:PORT"}, {"listen": "127.0.0.1:PORT", "proxy_ip": "127.0.0.1"},
     "proxy.tunnel_listen and dns.listen both listen on port PORT"),
])
def test_clash_is_one_line_exit_2(tmp_path, pki, command, proxy, dns, message):
    port = str(_free_port())
    text = _config(pki, proxy, dns).replace("PORT", port)
    p = tmp_path / "proxy.yaml"
    p.write_text(text)
    out = subprocess.run([sys.executable, "-m", "agentctl_proxy", command, "--config", str(p)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr == f"{p}: {message.replace('PORT', port)}; expected a different port or address for" \
                         " each listener\n"
    with socket.socket() as s:  # nothing was bound
        s.bind(("127.0.0.1", int(port)))
