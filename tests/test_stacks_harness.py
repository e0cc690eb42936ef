"""Evaluate the Pulumi program under mocks, once per variant, in isolated processes.

Pulumi's runtime and mocks are process-global. A harness process imports the SDKs
once, then forks one child per variant: each child applies its mutation (Python code,
run before the program is evaluated), evaluates, and sends back the registrations.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from agentctl.model import Deployment

ROOT = Path(__file__).resolve().parents[1]

HARNESS = r'''
import json, os, sys
from pathlib import Path
import pulumi, pulumi_aws, pulumi_hcloud
import agentctl.plan, agentctl.render, agentctl.userdata
from agentctl_stacks import program, aws_deployment, hcloud_deployment, policy, agent_imds, proxy_secrets
# The provider SDKs load submodules lazily: load them once here, not in every child.
for _mod in ("ec2", "vpc", "iam", "kms", "ssm", "route53", "cloudwatch", "sns", "ec2transitgateway"):
    getattr(pulumi_aws, _mod).__dict__
pulumi_hcloud.Server, pulumi_hcloud.Firewall

def override(module, cls_name, name_part, **changes):
    """Mutation: every `cls_name` whose resource name contains name_part gets changes."""
    original = getattr(module, cls_name)
    class Mutant(original):
        def __init__(self, resource_name, *args, **kwargs):
            if name_part in resource_name:
                kwargs.update(changes)
            super().__init__(resource_name, *args, **kwargs)
    setattr(module, cls_name, Mutant)

def after(cls, method, extra):
    """Mutation: run extra(self) after a component method (e.g. to add an opening)."""
    original = getattr(cls, method)
    def mutant(self):
        original(self)
        extra(self)
    setattr(cls, method, mutant)

def expected_user_data(folder, stack):
    """host -> the user-data the program should hand that host, rendered here, in the
    evaluating process and before any mutation (None when the project has no CA yet)."""
    from agentctl.ca import ca_dir, ensure_ca
    from agentctl.stackfile import load
    if not ca_dir(folder, stack).is_dir():
        return None
    d = load(folder, stack)
    hosts = agentctl.render.render_hosts(d, ensure_ca(folder, stack).cert_pem, stack=stack,
                                         project=agentctl.plan.project_name(folder))
    # Hetzner servers get the Hetzner form of it (gzip + base64 past 32 KiB)
    wrap = agentctl.userdata.hcloud_user_data if d.cloud == "hcloud" else str
    return {h.name: wrap(h.user_data) for h in hosts}

jobs = json.load(sys.stdin)
results = {}
for key, job in jobs.items():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            rendered = expected_user_data(Path(job["dir"]), job["stack"])
            exec(job["patch"], dict(globals()))
            resources, outputs = agentctl.plan.evaluate_with_outputs(Path(job["dir"]), job["stack"])
            out = {"resources": resources, "outputs": outputs, "rendered": rendered}
        except BaseException as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_end, "w") as fh:
            json.dump(out, fh)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    results[key] = json.loads(data)
json.dump(results, sys.stdout)
'''


@dataclass(frozen=True)
class Plan:
    """One evaluated program: what it registered, its outputs, and each host's
    user-data as render made it in the evaluating process."""
    resources: list[dict]
    outputs: dict
    rendered: dict


@dataclass(frozen=True)
class Ctx:
    """What the program should have derived its resources from."""
    deployment: Deployment
    ca_fingerprint: str


def make_project(tmp: Path, stack: str, edit=None) -> Path:
    """A project folder with Pulumi.yaml and one example stack, optionally edited
    (edit gets the `config:` mapping and changes it in place)."""
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Pulumi.yaml", tmp / "Pulumi.yaml")
    doc = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    if edit:
        edit(doc["config"])
    (tmp / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return tmp


def evaluate_variants(jobs: dict[str, dict], workers: int = 2, with_outputs: bool = False) -> dict:
    """jobs: name -> {dir, stack, patch}. Returns name -> registered resources, or with
    with_outputs name -> {"resources": [...], "outputs": {...} (the stack outputs),
    "rendered": {host: user-data} (what render gives each host, when the project has a CA)}."""
    names = sorted(jobs)
    shards = [names[i::workers] for i in range(workers)]

    def run(shard: list[str]) -> dict:
        if not shard:
            return {}
        proc = subprocess.run([sys.executable, "-c", HARNESS], input=json.dumps({n: jobs[n] for n in shard}),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    with ThreadPoolExecutor(workers) as pool:
        merged = {k: v for part in pool.map(run, shards) for k, v in part.items()}
    errors = {k: v["error"] for k, v in merged.items() if "error" in v}
    assert not errors, errors
    return merged if with_outputs else {k: v["resources"] for k, v in merged.items()}


# --- lookups over recorded registrations -------------------------------------------

def of_type(resources: list[dict], token: str) -> list[dict]:
    return [r for r in resources if r["type"] == token]


def named(resources: list[dict], name: str) -> dict:
    matches = [r for r in resources if r["name"] == name]
    assert len(matches) == 1, f"expected one resource named {name}, found {len(matches)}"
    return matches[0]


def test_variants_are_isolated(tmp_path):
    """Two evaluations in one harness do not leak resources into each other."""
    project = make_project(tmp_path, "example-hcloud")
    job = {"dir": str(project), "stack": "example-hcloud", "patch": ""}
    added = dict(job, patch="import pulumi_hcloud as h\n"
                             "after(hcloud_deployment.HcloudDeployment, '_firewall', "
                             "lambda self: h.Firewall(self._name + '-extra', rules=[], opts=self._opts()))")
    out = evaluate_variants({"a": job, "b": added, "c": job}, workers=1)
    assert [r["name"] for r in out["a"]] == [r["name"] for r in out["c"]]
    assert len(out["b"]) == len(out["a"]) + 1
