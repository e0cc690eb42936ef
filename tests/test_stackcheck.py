"""One validation: what `plan` refuses, `render`, `verify` and `lab` refuse too, with the
same one line, because every command reads the stack through stackfile.from_config
(which runs agentctl/stackcheck.py). Each case ran through the real CLI entry point."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agentctl.errors import ConfigError
from agentctl.stackcheck import StackContext, check_stack, register, BY_CLOUD
from agentctl.stackfile import load
from tests.test_stacks_harness import ROOT, make_project


def _secret(name, **origin):
    return {"name": name, **origin, "inject": {"header": "Authorization"},
            "rules": [{"host": "api.github.com", "methods": ["GET"]}]}


def _add_secret(secret):
    return lambda c: c["agentctl:agents"][0].setdefault("egress", {}).setdefault("secrets", []).append(secret)


def _both(*edits):
    def edit(c):
        for e in edits:
            e(c)
    return edit


# (case, stack, edit, key path, words): every one exits 2 from every command.
CASES = [
    ("same secret name twice in one agent (from)", "example-hcloud",
     _add_secret(_secret("github-pat", **{"from": {"config": "githubPat"}})),
     "agentctl:agents[0].egress.secrets[3].name", "unique secret name per agent"),
    ("same secret name twice in one agent (source)", "example-hcloud",
     _both(_add_secret(_secret("x", source={"type": "file", "path": "/etc/x"})),
           _add_secret(_secret("x", source={"type": "env", "var": "X"}))),
     "agentctl:agents[0].egress.secrets[4].name", "unique secret name per agent"),
    ("hetzner region fra1", "example-hcloud", lambda c: c.update({"agentctl:region": "fra1"}),
     "agentctl:region", "'fra1' is not a Hetzner location"),
    ("hetzner without adminCidrs", "example-hcloud", lambda c: c["agentctl:network"].pop("adminCidrs"),
     "agentctl:network.adminCidrs", "pushed over SSH"),
    ("agentctl:region is not aws:region", "example-aws", lambda c: c.update({"aws:region": "eu-west-1"}),
     "agentctl:region", "aws:region is 'eu-west-1'"),
    ("aws_ssm source on hetzner", "example-hcloud",
     _add_secret(_secret("x", source={"type": "aws_ssm", "name": "/agentctl/example-hcloud/scout/x"})),
     "agentctl:agents[0].egress.secrets[3].source.type", "no AWS role"),
    ("aws size on hetzner", "example-hcloud", lambda c: c["agentctl:agents"][0].update(size="t3.medium"),
     "agentctl:agents[0].size", "'t3.medium' is not a size Hetzner Cloud has"),
    ("hetzner size on aws", "example-aws", lambda c: c["agentctl:proxy"].update(size="cx22"),
     "agentctl:proxy.size", "'cx22' is not a size AWS has"),
    ("ami on hetzner", "example-hcloud", lambda c: c.update({"agentctl:ami": "ami-0123456789abcdef0"}),
     "agentctl:ami", "this stack runs on Hetzner Cloud"),
    ("hetzner image on aws", "example-aws", lambda c: c.update({"agentctl:image": "ubuntu-24.04"}),
     "agentctl:image", "this stack runs on AWS"),
    ("hetzner region on aws", "example-aws", lambda c: c.update({"agentctl:region": "fsn1", "aws:region": "fsn1"}),
     "agentctl:region", "not an AWS region"),
    ("ssm parameter of another deployment", "example-aws",
     _add_secret(_secret("x", source={"type": "aws_ssm", "name": "/other-team/prod/x"})),
     "agentctl:agents[0].egress.secrets[3].source.name", "instance role cannot read it"),
    ("aws_ssm source in the lab", "lab",
     _add_secret(_secret("x", source={"type": "aws_ssm", "name": "/agentctl/lab/scout/x"})),
     "agentctl:agents[0].egress.secrets[1].source.type", "the lab has no AWS role"),
]

DRIVER = r'''
import contextlib, io, json, sys
from agentctl.cli import main
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    sys.argv = ["agentctl", *argv]
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    results[name] = [code, err.getvalue()]
print(json.dumps(results))
'''


def _commands(stack: str, project: str, out: str) -> dict[str, list[str]]:
    common = ["--stack", stack, "--project-dir", project]
    commands = {"render": ["render", *common, "--out", out],
                "verify": ["verify", *common, "--host", "scout=paramiko://admin@192.0.2.1"]}
    if stack == "lab":
        commands["lab status"] = ["lab", "status", *common, "--state-dir", out + "-state"]
    else:
        commands["plan"] = ["plan", *common, "--json"]
    return commands


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case through every command, in one process (the CLI's main, as installed)."""
    jobs, projects = {}, {}
    for i, (case, stack, edit, _, _) in enumerate(CASES):
        project = make_project(tmp_path_factory.mktemp(f"case{i}"), stack, edit)
        projects[case] = project
        for cmd, argv in _commands(stack, str(project), str(project / "out")).items():
            jobs[f"{case}|{cmd}"] = argv
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(jobs)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), projects


@pytest.mark.parametrize("case,stack,edit,key_path,words", CASES, ids=[c[0] for c in CASES])
def test_every_command_refuses_with_the_same_line(outcomes, case, stack, edit, key_path, words):
    results, projects = outcomes
    lines = {cmd: results[f"{case}|{cmd}"] for cmd in _commands(stack, "p", "o")}
    for cmd, (code, err) in lines.items():
        assert code == 2, (cmd, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (cmd, err)
        assert key_path in err and words in err, (cmd, err)
    assert len({err for _, err in lines.values()}) == 1, lines
    project = projects[case]
    assert not (project / "out").exists() and not (project / ".agentctl").exists(), "nothing written"


@pytest.mark.parametrize("stack", ["lab", "example-aws", "example-hcloud"])
def test_example_stacks_pass_every_check(stack):
    load(ROOT, stack)


def test_a_cloud_catalog_plugs_in(monkeypatch):
    """The hook a cloud's catalog of server types uses: its refusal is every command's."""
    def catalog(ctx: StackContext) -> None:
        raise ctx.fail("proxy.size", f"{ctx.deployment.proxy.size!r} is no longer offered", "a current server type")

    monkeypatch.setitem(BY_CLOUD, "hcloud", list(BY_CLOUD["hcloud"]))
    register("hcloud", catalog)
    with pytest.raises(ConfigError, match="agentctl:proxy.size: .* is no longer offered"):
        load(ROOT, "example-hcloud")
    d = load(ROOT, "example-aws")
    check_stack(StackContext(d, {}, "f", "agentctl", "example-aws"))  # other clouds untouched
