"""`agentctl plan`: evaluate the Pulumi program offline under Pulumi's mocks.

No CLI, no credentials, no cloud calls: the mocks answer every resource with its own
inputs and every lookup (account, zones, AMI) with a placeholder. Pulumi's runtime is
process-global, so evaluate once per process (the CLI does).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml

from agentctl.errors import ConfigError
from agentctl.stackcheck import require_pulumi_cloud
from agentctl.stackfile import NAMESPACE, load, stack_path

SECRET_PLACEHOLDER = "[secret]"
PLACEHOLDER_ACCOUNT = "123456789012"
PLACEHOLDER_AMI = "ami-00000000000000000"


def project_name(project_dir: Path) -> str:
    try:
        doc = yaml.safe_load((Path(project_dir) / "Pulumi.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return "agentctl"
    return str((doc or {}).get("name") or "agentctl")


def runtime_config(stack_config: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The stack file as the engine hands it to a program: every value a string
    (structured ones as JSON) and secrets decrypted; here a placeholder instead."""
    config: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in stack_config.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            config[key], _ = SECRET_PLACEHOLDER, secret_keys.append(key)
        else:
            config[key] = value if isinstance(value, str) else json.dumps(value)
    return config, secret_keys


def clean(value: Any) -> Any:
    """Inputs as printable JSON: secrets redacted, integral floats as ints."""
    from pulumi.runtime import rpc

    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return SECRET_PLACEHOLDER
        return {k: ("[dynamic provider]" if k == "__provider" else clean(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def mock_id(name: str) -> str:
    """The id the mocks give a (non-hcloud) resource: how inputs refer to it in a plan."""
    return f"{name}-id"


def _mocks(records: list[dict[str, Any]], region: str):
    import pulumi

    class RecordingMocks(pulumi.runtime.Mocks):
        """Records every registration; answers with the inputs plus the ids and
        attributes a real provider would compute."""

        def new_resource(self, args: pulumi.runtime.MockResourceArgs):
            records.append({"type": args.typ, "name": args.name, "inputs": clean(args.inputs)})
            state = dict(args.inputs)
            if args.typ.startswith("hcloud:"):
                # hcloud ids are integers; programs convert them with int().
                state.setdefault("ipAddress", "203.0.113.10")
                return str(1000 + len(records)), state
            if args.typ.startswith("aws:"):
                state.setdefault("arn", f"arn:aws:mock:{region}:{PLACEHOLDER_ACCOUNT}:{args.name}")
                state.setdefault("name", args.name)
                state.setdefault("keyId", f"{args.name}-key-id")
                state.setdefault("publicIp", "203.0.113.20")
            return mock_id(args.name), state

        def call(self, args: pulumi.runtime.MockCallArgs):
            if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
                return {"accountId": PLACEHOLDER_ACCOUNT, "arn": "", "id": PLACEHOLDER_ACCOUNT, "userId": ""}
            if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
                return {"names": [f"{region}a", f"{region}b"], "zoneIds": [], "id": region}
            if args.token == "aws:ec2/getAmi:getAmi":
                return {"id": PLACEHOLDER_AMI, "imageId": PLACEHOLDER_AMI}
            return {}

    return RecordingMocks()


def evaluate(project_dir: Path, stack: str) -> list[dict[str, Any]]:
    """Every resource the program declares for the stack, as {type, name, inputs}."""
    return evaluate_with_outputs(project_dir, stack)[0]


def evaluate_with_outputs(project_dir: Path, stack: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The resources, and the stack outputs the program exports (as `pulumi stack output`
    would show them, secrets redacted)."""
    project_dir = Path(project_dir)
    deployment = load(project_dir, stack)  # bad config stops here, before any resource
    source = str(stack_path(project_dir, stack))
    stack_config = yaml.safe_load(stack_path(project_dir, stack).read_text())["config"]
    project = project_name(project_dir)

    if deployment.cloud == "aws":
        from agentctl import provider_imports

        provider_imports.install()
    from agentctl_stacks import program

    require_pulumi_cloud(deployment, source)  # every other check ran in load()

    import pulumi
    from pulumi.runtime.settings import get_root_resource
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    from agentctl.ca import ca_dir, ensure_ca

    records: list[dict[str, Any]] = []
    outputs: dict[str, Any] = {}
    config, secret_keys = runtime_config(stack_config)
    with tempfile.TemporaryDirectory(prefix="agentctl-plan-") as scratch:
        # Use the stack's CA when it exists; never create one in the project just to plan.
        ca = ensure_ca(project_dir if ca_dir(project_dir, stack).is_dir() else Path(scratch), stack)
        pulumi.runtime.set_all_config(config, secret_keys)
        pulumi.runtime.set_mocks(_mocks(records, deployment.region), project=project, stack=stack, preview=False)

        async def run() -> None:
            declared, _ = program.load_from_runtime(stack)
            program.declare(declared, ca.cert_pem, ca.fingerprint_sha256, ca.key_path.read_text(),
                            project=project, stack=stack)
            for name, value in get_root_resource().outputs.items():
                output = pulumi.Output.from_input(value)
                resolved = await output.future()
                outputs[name] = SECRET_PLACEHOLDER if await output.is_secret() else clean(resolved)

        try:
            _sync_await(run_pulumi_func(run))
        except ConfigError:
            raise
        except ValueError as exc:  # e.g. user-data over EC2's limit
            raise ConfigError(source, f"{NAMESPACE}:", str(exc)) from None
    return sorted(records, key=lambda r: r["name"]), outputs


def run_plan(project_dir: Path, stack: str, as_json: bool) -> None:
    resources, outputs = evaluate_with_outputs(project_dir, stack)
    if as_json:
        print(json.dumps(resources, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=180)  # pipes and logs: keep one resource per line
    table = Table(title=f"agentctl plan: stack {stack} ({len(resources)} resources, offline, under mocks; "
                        "--json for every input)")
    table.add_column("type", no_wrap=True, min_width=max(len(r["type"]) for r in resources))
    table.add_column("name", no_wrap=True, min_width=max(len(r["name"]) for r in resources))
    table.add_column("inputs", overflow="ellipsis", no_wrap=True)
    for r in resources:
        table.add_row(r["type"], r["name"], json.dumps(r["inputs"], sort_keys=True))
    console.print(table)
    outs = Table(title="stack outputs (as `pulumi up` exports them; lookups are placeholders)")
    outs.add_column("output", no_wrap=True)
    outs.add_column("value", overflow="fold")
    for name, value in sorted(outputs.items()):
        outs.add_row(name, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    console.print(outs)
