"""The project root's __main__.py as `pulumi up` runs it: by path, config from the engine, CA
created at the project root on first use (here under mocks, in a fresh process)."""
from __future__ import annotations

import subprocess
import sys

from tests.test_stacks_harness import ROOT, make_project

RUN = r'''
import runpy, sys, yaml
import pulumi
from agentctl.plan import runtime_config, _mocks
import json, os
config, secret_keys = runtime_config(yaml.safe_load(open("Pulumi.example-hcloud.yaml"))["config"])
# what the language host passes a program (public names only: agentctl/pulumi_private.py)
os.environ.update(PULUMI_CONFIG=json.dumps(config), PULUMI_CONFIG_SECRET_KEYS=json.dumps(secret_keys))
pulumi.runtime.set_all_config(config, secret_keys)
records = []
pulumi.runtime.set_mocks(_mocks(records, "fsn1"), project="agentctl", stack="example-hcloud", preview=False)
pulumi.runtime.test(lambda: runpy.run_path(sys.argv[1], run_name="__main__"))()
print(len(records))
'''


def test_entry_point_declares_the_stack_and_keeps_the_ca_at_the_project_root(tmp_path):
    project = make_project(tmp_path, "example-hcloud")
    proc = subprocess.run([sys.executable, "-c", RUN, str(ROOT)], cwd=project, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip()) == 11
    ca = project / ".agentctl" / "example-hcloud" / "ca"
    assert (ca / "ca.crt").is_file() and (ca / "ca.key").stat().st_mode & 0o077 == 0
