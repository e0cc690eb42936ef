"""Canary for agentctl/pulumi_private.py, the one module that relies on something the
Pulumi SDK does not publish, and for provider_imports' reading of pulumi's lazy
imports. Fails on an SDK upgrade that changes them, before `plan` could print a secret.
Each check runs in a fresh process (Pulumi's runtime is process-global)."""
from __future__ import annotations

import subprocess
import sys

from agentctl.pulumi_private import SECRET_SIG, SECRET_SIG_KEY, is_secret_input


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_the_wire_markers_are_the_installed_sdks():
    from pulumi.runtime import rpc

    assert (rpc._special_sig_key, rpc._special_secret_sig) == (SECRET_SIG_KEY, SECRET_SIG)


def test_a_secret_input_reaches_the_mocks_marked_and_is_recognised():
    """End to end through the public API: a resource given Output.secret(...) under
    set_mocks + pulumi.runtime.test; the mock sees the marker, plan's test finds it."""
    out = _run(r'''
import json, pulumi
seen = {}
class M(pulumi.runtime.Mocks):
    def new_resource(self, args):
        seen.update(args.inputs)
        return "id", args.inputs
    def call(self, args):
        return {}
pulumi.runtime.set_mocks(M(), project="p", stack="s", preview=False)
class R(pulumi.CustomResource):
    def __init__(self, name, **props):
        super().__init__("test:index:R", name, props)
pulumi.runtime.test(lambda: R("r", token=pulumi.Output.secret("hunter2"), plain="x").id)()
print(json.dumps(seen))
''')
    import json

    seen = json.loads(out)
    assert is_secret_input(seen["token"]) and not is_secret_input(seen["plain"])


def test_lazy_provider_packages_are_recognised_by_public_importlib_api():
    """provider_imports only replaces a pulumi_aws service package that pulumi's
    lazy_import has not executed yet; it tells so with importlib.util.LazyLoader."""
    out = _run(r'''
import sys, pulumi_aws
from agentctl.provider_imports import _is_unloaded_lazy
before = _is_unloaded_lazy(sys.modules["pulumi_aws.ec2"])
pulumi_aws.ec2.Vpc
print(before, _is_unloaded_lazy(sys.modules["pulumi_aws.ec2"]))
''')
    assert out == "True False"
