"""layer_choice: the addon's next_layer, in-process on mitmproxy's own objects, for the stacks the
e2e battery cannot build from outside: anything unexpected is refused, and audited."""

import json

from mitmproxy.options import Options
from mitmproxy.proxy import events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import modes, tcp
from mitmproxy.test import tflow

from agentctl_proxy.addon import EgressAddon
from agentctl_proxy.audit import AuditLog
from agentctl_proxy.config import parse_config
from agentctl_proxy.layer_choice import Refuse
from agentctl_proxy.runtime import Runtime

CONFIG = {"proxy": {"tunnel_listen": "127.0.0.1:1"}, "tls": {"ca_cert": "/x", "ca_key": "/y"},
          "transforms": [{"name": "allowlist", "config": {"rules": [{"host": "a.example", "methods": ["GET"]}]}}]}


def test_unexpected_protocol_stack_is_refused_and_audited(tmp_path):
    audit = tmp_path / "audit.jsonl"
    egress = EgressAddon(Runtime.build(parse_config(CONFIG)), AuditLog(str(audit)))
    ctx = Context(tflow.tclient_conn(), Options())
    modes.HttpProxy(ctx)
    tcp.TCPLayer(ctx)  # raw TCP under the explicit proxy: a stack we never build
    nl = layer.NextLayer(ctx)
    nl.events.append(events.DataReceived(ctx.client, b"GET / HTTP/1.1\r\n\r\n"))
    egress.next_layer(nl)
    assert isinstance(nl.layer, Refuse)
    (line,) = [json.loads(x) for x in audit.read_text().splitlines()]
    assert line["action"] == "deny" and line["event"] == "decision"
    assert line["rejected_by"] == "unexpected protocol stack HttpProxy/TCPLayer"
