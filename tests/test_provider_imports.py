"""`agentctl plan` loads only the AWS resource modules the program uses, and every name
still resolves to what the provider package itself gives.

Each case runs in a fresh interpreter: which modules are imported is process-wide.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pulumi_aws
import pytest

from agentctl.provider_imports import SERVICES, module_name

ROOT = Path(__file__).resolve().parents[1]

# what a name resolves to, as text: module and qualified name (or the module's name)
_DESCRIBE = """
import json, sys, types
def describe(obj):
    if isinstance(obj, types.ModuleType):
        return "module " + obj.__name__
    return f"{obj.__module__}.{getattr(obj, '__qualname__', type(obj).__name__)}"
"""


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", _DESCRIBE + code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_module_name_follows_the_generated_file_names():
    assert module_name("SecurityGroup") == "security_group"
    assert module_name("Vpc") == "vpc"
    assert module_name("get_ami_output") == "get_ami"
    assert module_name("outputs") == "outputs"


@pytest.mark.parametrize("service", SERVICES)
def test_every_public_name_resolves_as_the_package_gives_it(service):
    names = json.loads(_python(f"""
import pulumi_aws.{service} as pkg
pkg._utilities  # pulumi's lazy module runs the package on a first attribute; dir() alone does not
print(json.dumps({{n: describe(getattr(pkg, n)) for n in dir(pkg) if not n.startswith("__")}}))
"""))
    # first every name that has a file of its own (each loaded alone, functions after
    # their _output twin has loaded the file), then the rest (the package's __init__)
    folder = Path(pulumi_aws.__file__).parent / service
    own_file = sorted((n for n in names if (folder / f"{module_name(n)}.py").is_file()),
                      key=lambda n: (not n.endswith("_output"), n))
    rest = sorted(set(names) - set(own_file))
    assert len(own_file) > 5 and rest and any(n.startswith("get_") for n in own_file)
    lazy = json.loads(_python(f"""
from agentctl import provider_imports
provider_imports.install()
import pulumi_aws
pkg = pulumi_aws.{service}
first = {{n: describe(getattr(pkg, n)) for n in {own_file!r}}}
fallback = bool(pkg.__dict__.get("_agentctl_loaded"))
print(json.dumps({{"fallback": fallback, "names": {{**first, **{{n: describe(getattr(pkg, n)) for n in {rest!r}}}}}}}))
"""))
    assert lazy == {"fallback": False, "names": names}


def test_the_stacks_names_load_without_the_rest_of_the_package():
    loaded = json.loads(_python("""
from agentctl import provider_imports
provider_imports.install()
import pulumi_aws as aws
aws.ec2.Vpc, aws.ec2.SecurityGroup, aws.ec2.get_ami_output, aws.cloudwatch.MetricAlarm
print(json.dumps({
    "fallback": bool(aws.ec2.__dict__.get("_agentctl_loaded")),
    "unused": "pulumi_aws.ec2.allowed_images_settings" in sys.modules,
    "vpc": describe(aws.ec2.Vpc),
}))
"""))
    assert loaded == {"fallback": False, "unused": False, "vpc": "pulumi_aws.ec2.vpc.Vpc"}


def test_a_name_the_package_lacks_is_still_an_attribute_error():
    out = _python("""
from agentctl import provider_imports
provider_imports.install()
import pulumi_aws as aws
try:
    aws.ec2.NoSuchResource
except AttributeError as e:
    print("AttributeError", e)
print(describe(aws.ec2.VpcArgs))
""")
    assert "AttributeError module 'pulumi_aws.ec2' has no attribute 'NoSuchResource'" in out
    assert "pulumi_aws.ec2.vpc.VpcArgs" in out


_PLAN = """
from pathlib import Path
from agentctl import plan, provider_imports
if {plain}:
    provider_imports.install = lambda *a, **k: None  # the package as `pulumi up` imports it
resources, outputs = plan.evaluate_with_outputs(Path("."), "example-aws")
def shape(v):
    if isinstance(v, dict):
        return {{k: shape(x) for k, x in v.items()}}
    if isinstance(v, list):
        return [shape(x) for x in v]
    return type(v).__name__
print(json.dumps({{"resources": [(r["type"], r["name"], shape(r["inputs"])) for r in resources],
                  "outputs": sorted(outputs), "lazy": "pulumi_aws.ec2.ami_copy" not in sys.modules}}))
"""


def test_plan_declares_the_same_resources_either_way():
    # values differ run to run (a scratch CA, mock ids); types, names and input shapes do not
    lazy = json.loads(_python(_PLAN.format(plain=False)))
    plain = json.loads(_python(_PLAN.format(plain=True)))
    assert lazy["lazy"] and not plain["lazy"]
    assert lazy["resources"] == plain["resources"] and len(lazy["resources"]) > 40
    assert lazy["outputs"] == plain["outputs"]
