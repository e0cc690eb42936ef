"""Quoting at the sink: whatever a value holds, it arrives as data in the rendered
script or unit, read back the way bash and systemd read it. The model's boundary
checks are bypassed here (model_copy does not validate) so these tests hold even if a
check is loosened; the values that pass the boundary are tested too."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agentctl.escape import sh, systemd_env
from agentctl.render import render_hosts
from agentctl.stackfile import from_config, load

from .conftest import ROOT
from .test_render import _commands, _unit, _values, systemd_words, unit_environment, unit_keys

EVIL = "x'\"; touch {tmp}/pwned; $(touch {tmp}/pwned2) `touch {tmp}/pwned3` \\"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))
def test_sh_is_one_word_for_bash(value):
    out = subprocess.run(["bash", "-c", f"printf %s {sh(value)}"], capture_output=True, check=True)
    assert out.stdout.decode("utf-8", "surrogateescape") == value


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))
def test_systemd_env_is_one_assignment(value):
    rendered = systemd_env("NAME", value)
    assert "\n" not in rendered and not rendered.endswith("\\")  # no new directive, no continuation
    assert systemd_words(rendered) == [f"NAME={value}"]


def _files(d, name: str) -> dict[str, str]:
    host = next(h for h in render_hosts(d, "CA", stack="t") if h.name == name)
    return {f["path"]: f["content"] for f in yaml.safe_load(host.user_data)["write_files"]}


def _with_command(d, **update):
    agent = d.agents[0]
    command = agent.runtime.command.model_copy(update=update)
    agent = agent.model_copy(update={"runtime": agent.runtime.model_copy(update={"command": command})})
    return d.model_copy(update={"agents": [agent]})


def _run_watchdog(script: str, tmp_path: Path) -> list[str]:
    """Run the rendered watchdog with a healthy agent; return the argv curl got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "last-backup"  # a fresh backup, where the stack keeps them
    marker.touch()
    (bin_dir / "systemctl").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "logger").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "curl").write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > {tmp_path}/curl-argv\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    (tmp_path / "watchdog").write_text(script)
    subprocess.run(["bash", str(tmp_path / "watchdog")], check=True, cwd=tmp_path,
                   env={"PATH": f"{bin_dir}:/usr/bin:/bin", "AGENTCTL_WATCHDOG_STATE": str(tmp_path / "state"),
                        "AGENTCTL_BACKUP_MARKER": str(marker)})
    return (tmp_path / "curl-argv").read_text().split("\0")[:-1]


def test_heartbeat_url_stays_one_curl_argument(tmp_path):
    url = "https://hb.example/" + EVIL.format(tmp=tmp_path)
    d = load(ROOT, "lab").model_copy(update={"heartbeat_url": url})
    argv = _run_watchdog(_files(d, "scout")["/usr/local/sbin/agentctl-watchdog"], tmp_path)
    assert argv[-1] == url
    assert not list(tmp_path.glob("pwned*"))


def test_legitimate_heartbeat_url_arrives_intact(tmp_path):
    url = "https://hb.example:8443/ping/abc?rid=1&x=a%2Fb;c,d+e@f!g~h"
    d = from_config({**yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"],
                     "agentctl:heartbeatUrl": url}, "t")
    argv = _run_watchdog(_files(d, "scout")["/usr/local/sbin/agentctl-watchdog"], tmp_path)
    assert argv[-2:] == ["/dev/null", url] and "--proxy" in argv


def test_environment_values_cannot_add_unit_directives():
    evil = {"MODE": "x\nUser=root\nIPAddressAllow=any\n[Service]\nExecStartPre=/bin/sh -c id",
            "TAIL": "ends in a backslash \\", "PCT": "%h %u 100%"}
    d = _with_command(load(ROOT, "lab"), environment=evil, exec="/usr/bin/agent --home %h")
    text = _files(d, "scout")["/etc/systemd/system/agentctl-agent.service"]
    unit = _unit(text)
    assert unit_keys(text).count("User") == 1 and unit["Service"]["User"] == "agentuser"
    assert _values(unit, "Service", "IPAddressAllow") == [f"{d.proxy_ip}/32", "localhost"]
    assert "ExecStartPre" not in unit_keys(text)
    assert [l for l in text.splitlines() if l.startswith("[")] == ["[Unit]", "[Service]", "[Install]"]
    env = unit_environment(unit)
    assert {k: env[k] for k in evil} == evil
    assert systemd_words(unit["Service"]["ExecStart"]) == ["/usr/bin/agent", "--home", "%h"]


def test_legitimate_environment_values_arrive_intact():
    value = 'a "quoted" value, 100% \\ back\\slash $HOME `x` \'y\''
    config = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"]
    config["agentctl:agents"][0]["runtime"]["command"]["environment"] = {"MODE": value}
    unit = _unit(_files(from_config(config, "t"), "scout")["/etc/systemd/system/agentctl-agent.service"])
    assert unit_environment(unit)["MODE"] == value


def test_proxy_pip_spec_stays_one_argument(tmp_path):
    d = load(ROOT, "example-aws")
    spec = "agentctl-proxy==0.1.0" + EVIL.format(tmp=tmp_path)
    d = d.model_copy(update={"proxy": d.proxy.model_copy(
        update={"install": d.proxy.install.model_copy(update={"pip": spec})})})
    converge = _files(d, "proxy")["/usr/local/sbin/agentctl-converge"]
    (pip,) = _commands(converge, "/opt/agentctl-proxy/venv/bin/pip")
    assert pip == ["/opt/agentctl-proxy/venv/bin/pip", "install", "--quiet", spec]
