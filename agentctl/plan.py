"""`agentctl plan`: evaluate the Pulumi program offline under Pulumi's mocks.

No CLI, no credentials, no cloud calls: the mocks answer every resource with its own
inputs and every lookup (account, zones, AMI) with a placeholder. Pulumi's runtime is
process-global, so evaluate once per process (the CLI does).
"""
from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from agentctl.errors import ConfigError
from agentctl.stackcheck import require_pulumi_cloud
from agentctl.stackfile import NAMESPACE, load, stack_path

SECRET_PLACEHOLDER = "[secret]"
ENGINE_CONFIG_ENV = ("PULUMI_CONFIG", "PULUMI_CONFIG_SECRET_KEYS")
PLACEHOLDER_ACCOUNT = "123456789012"
PLACEHOLDER_AMI = "ami-00000000000000000"
PLACEHOLDER_HCLOUD_KEY_ID = 0


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
    from agentctl.pulumi_private import is_secret_input

    if isinstance(value, dict):
        if is_secret_input(value):
            return SECRET_PLACEHOLDER
        return {k: ("[dynamic provider]" if k == "__provider" else clean(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


OPTION_KEYS = ("parent", "dependsOn", "deleteBeforeReplace", "replaceOnChanges", "ignoreChanges", "protect",
               "provider", "replacementTrigger")


def _resource_name(resource: Any, names: dict[int, str]) -> str | None:
    return None if resource is None else names.get(id(resource), "[outside the program]")


def option_recorder(options: dict[str, dict[str, Any]]):
    """A stack transformation (Pulumi's public `register_stack_transformation`, run by the
    SDK itself, so it sees every resource under mocks too) that records the options each
    resource is declared with, as the engine would receive them, by resource name.
    Resources are named by the names they were declared with: parent and dependsOn name
    other resources of this program; `provider: null` is the package's default provider."""
    import pulumi

    names: dict[int, str] = {}

    def record(args: pulumi.ResourceTransformationArgs) -> None:
        names[id(args.resource)] = args.name
        o = args.opts or pulumi.ResourceOptions()
        depends = o.depends_on if isinstance(o.depends_on, (list, tuple)) else [o.depends_on] if o.depends_on else []
        options[args.name] = {
            "parent": _resource_name(o.parent, names),
            "dependsOn": sorted(_resource_name(r, names) for r in depends),
            "deleteBeforeReplace": bool(o.delete_before_replace),
            "replaceOnChanges": sorted(o.replace_on_changes or []),
            "ignoreChanges": sorted(o.ignore_changes or []),
            "protect": bool(o.protect),
            "provider": _resource_name(o.provider, names),
            # A plain digest shows as itself (so two plans can be compared); else whether one is set.
            # (an option of newer SDKs: absent on the oldest the pins allow)
            "replacementTrigger": (trigger if isinstance(trigger := getattr(o, "replacement_trigger", None), str)
                                   else trigger is not None),
        }
        return None

    return record


# What the mocked Hetzner project already holds (tests add keys here): [{id, name,
# fingerprint, publicKey, labels}].
MOCK_HCLOUD_SSH_KEYS: list[dict[str, Any]] = []


def mock_zones(region: str) -> list[dict[str, str]]:
    """A region as DescribeAvailabilityZones answers an account that opted in to a Local
    Zone, which sorts first."""
    return [{"name": f"{region}-atl-2a", "zone-type": "local-zone", "opt-in-status": "opted-in"},
            {"name": f"{region}a", "zone-type": "availability-zone", "opt-in-status": "opt-in-not-required"},
            {"name": f"{region}b", "zone-type": "availability-zone", "opt-in-status": "opt-in-not-required"}]


def _matches(zone: dict[str, str], filters: list[dict[str, Any]]) -> bool:
    return all(zone.get(f["name"]) in f["values"] for f in filters)


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
                names = [z["name"] for z in mock_zones(region) if _matches(z, args.args.get("filters") or [])]
                return {"names": names, "zoneIds": [], "id": region}
            if args.token == "hcloud:index/getSshKeys:getSshKeys":
                return {"id": "ssh-keys", "sshKeys": list(MOCK_HCLOUD_SSH_KEYS)}
            if args.token == "hcloud:index/getSshKey:getSshKey":
                # a named key (agentctl:hcloudSshKeys): the mocked project's, else a
                # placeholder; `pulumi up` looks it up for real (run_plan says so)
                want = {k: v for k, v in args.args.items() if k in ("name", "fingerprint") and v}
                for key in MOCK_HCLOUD_SSH_KEYS:
                    if all(key.get(k) == v for k, v in want.items()):
                        return dict(key)
                return {"id": PLACEHOLDER_HCLOUD_KEY_ID, "name": want.get("name", ""),
                        "fingerprint": want.get("fingerprint", ""), "publicKey": "", "labels": {}}
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

    from agentctl.ca import ca_dir, ensure_ca

    records: list[dict[str, Any]] = []
    options: dict[str, dict[str, Any]] = {}
    outputs: dict[str, Any] = {}
    config, secret_keys = runtime_config(stack_config)
    with tempfile.TemporaryDirectory(prefix="agentctl-plan-") as scratch:
        # Use the stack's CA when it exists; never create one in the project just to plan.
        ca = ensure_ca(project_dir if ca_dir(project_dir, stack).is_dir() else Path(scratch), stack)
        # What the engine hands a program (PULUMI_CONFIG, PULUMI_CONFIG_SECRET_KEYS: the
        # language host sets both), through Pulumi's public setters, so the program reads
        # config the same way here as under `pulumi up` (program.config_mapping_from_runtime).
        saved = {k: os.environ.get(k) for k in ENGINE_CONFIG_ENV}
        os.environ.update({"PULUMI_CONFIG": json.dumps(config), "PULUMI_CONFIG_SECRET_KEYS": json.dumps(secret_keys)})
        pulumi.runtime.set_all_config(config, secret_keys)
        pulumi.runtime.set_mocks(_mocks(records, deployment.region), project=project, stack=stack, preview=False)

        def run() -> pulumi.Output:
            pulumi.runtime.register_stack_transformation(option_recorder(options))
            declared, _ = program.load_from_runtime(stack)
            program.declare(declared, ca.cert_pem, ca.fingerprint_sha256, ca.key_path.read_text(),
                            project=project, stack=stack)
            # The stack outputs as `pulumi stack output` shows them (what the program
            # exported, on the public root Stack resource), secrets redacted.
            exported = pulumi.runtime.get_root_resource().outputs
            names = sorted(exported)
            values = [pulumi.Output.from_input(exported[n]) for n in names]

            async def collect() -> None:
                for name, value in zip(names, values):
                    resolved = await value.future()
                    outputs[name] = SECRET_PLACEHOLDER if await value.is_secret() else clean(resolved)

            return pulumi.Output.from_input(asyncio.ensure_future(collect()))

        try:
            pulumi.runtime.test(run)()
        except ConfigError:
            raise
        except ValueError as exc:  # e.g. user-data over EC2's limit
            raise ConfigError(source, f"{NAMESPACE}:", str(exc)) from None
        finally:
            for key, old in saved.items():
                os.environ.pop(key, None) if old is None else os.environ.__setitem__(key, old)
    for record in records:
        record["options"] = options.get(record["name"], {})
    return sorted(records, key=lambda r: r["name"]), outputs


def run_plan(project_dir: Path, stack: str, as_json: bool) -> None:
    resources, outputs = evaluate_with_outputs(project_dir, stack)
    if as_json:
        print(json.dumps(resources, indent=2, sort_keys=True))
        return
    print(preview_text(stack, project_name(Path(project_dir)), resources, outputs))
    keys = load(Path(project_dir), stack).hcloud_ssh_keys
    if keys:
        import os

        how = ("checked against the Hetzner API" if os.environ.get("HCLOUD_TOKEN") else
               "not checked offline: `pulumi up` looks each one up (set HCLOUD_TOKEN to check now)")
        print(f"SSH keys by name or fingerprint ({', '.join(keys)}): {how}.")


# --- the human form: like `pulumi preview`, readable at 80 columns ---------------------

WIDTH = 80
# The inputs worth a glance, by short type; anything else shows its first few scalars.
KEY_INPUTS = {
    "aws:ec2:Vpc": ["cidrBlock"], "aws:ec2:Subnet": ["cidrBlock", "availabilityZone"],
    "aws:ec2:Instance": ["instanceType", "privateIp", "ami"], "aws:ec2:NetworkInterface": ["privateIps"],
    "aws:ec2:Eip": ["networkInterface", "instance"],
    "aws:vpc:SecurityGroupEgressRule": ["ipProtocol", "toPort", "cidrIpv4", "referencedSecurityGroupId"],
    "aws:vpc:SecurityGroupIngressRule": ["ipProtocol", "toPort", "cidrIpv4", "referencedSecurityGroupId"],
    "aws:ssm:Parameter": ["name", "value"], "aws:iam:Role": ["name"],
    "hcloud:index:Server": ["serverType", "location", "image"], "hcloud:index:NetworkSubnet": ["ipRange"],
    "hcloud:index:Network": ["ipRange"], "hcloud:index:PrimaryIp": ["type", "autoDelete"],
    "dynamic:ProxySecrets": ["host", "user"], "dynamic:AgentImds": ["host", "instanceId"],
}
SKIP_INPUTS = {"tags", "labels", "userData", "userDataBase64", "__provider", "policy", "assumeRolePolicy",
               "rules", "manifest", "files"}


def short_type(token: str) -> str:
    """aws:ec2/instance:Instance -> aws:ec2:Instance (what `pulumi preview` prints)."""
    if token.startswith("pulumi-python:dynamic/"):
        return "dynamic:" + token.rsplit(":", 1)[1]
    parts = token.split(":")
    if len(parts) == 3 and "/" in parts[1]:
        return f"{parts[0]}:{parts[1].split('/')[0]}:{parts[2]}"
    return token


def key_inputs(resource: dict[str, Any]) -> str:
    inputs, typ = resource["inputs"], short_type(resource["type"])
    keys = KEY_INPUTS.get(typ) or [k for k, v in sorted(inputs.items())
                                   if k not in SKIP_INPUTS and isinstance(v, (str, int, float, bool))][:3]
    shown = []
    for key in keys:
        if key in inputs:
            value = inputs[key]
            shown.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
    if "manifest" in inputs:
        shown.append("writes " + ", ".join(m["path"].rsplit("/", 1)[-1] for m in inputs["manifest"]))
    return "  ".join(shown)


def replace_notes(resource: dict[str, Any]) -> str:
    """How a change would replace this resource, from its options (and the one input that
    forces replacement on AWS instances)."""
    o, notes = resource.get("options") or {}, []
    if resource["inputs"].get("userDataReplaceOnChange"):
        notes.append("replaced when its user-data changes")
    if o.get("replaceOnChanges"):
        notes.append("replaced when " + ", ".join(o["replaceOnChanges"]) + " change")
    if o.get("replacementTrigger"):
        notes.append("replaced when its trigger changes")
    if o.get("deleteBeforeReplace"):
        notes.append("deleted before its replacement")
    if o.get("ignoreChanges"):
        notes.append("ignores " + ", ".join(o["ignoreChanges"]))
    if o.get("protect"):
        notes.append("protected")
    return "; ".join(notes)


def _fit(text: str, width: int = WIDTH) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _row(head: str, name: str) -> list[str]:
    """A tree row: type under "Type", name under "Name" (col 44); a name that would not
    fit goes on the next line, whole (names are what a reader looks for)."""
    if len(head) < NAME_COLUMN and NAME_COLUMN + len(name) <= WIDTH:
        return [f"{head:<{NAME_COLUMN}}{name}"]
    return [_fit(head), " " * max(NAME_COLUMN, WIDTH - len(name)) + name if len(name) < WIDTH else name]


NAME_COLUMN = 44


def preview_text(stack: str, project: str, resources: list[dict[str, Any]], outputs: dict[str, Any]) -> str:
    import textwrap

    children: dict[str | None, list[dict[str, Any]]] = {}
    for r in resources:
        children.setdefault((r.get("options") or {}).get("parent"), []).append(r)
    lines = [f"Previewing update ({stack}), offline under Pulumi's mocks:", "",
             f"{'     Type':<{NAME_COLUMN}}Name", *_row(" +   pulumi:pulumi:Stack", f"{project}-{stack}")]

    def walk(parent: str | None, indent: str) -> None:
        kids = children.get(parent, [])
        for i, r in enumerate(kids):
            last = i == len(kids) - 1
            branch, more = ("└─ " if last else "├─ "), ("   " if last else "│  ")
            lines.extend(_row(f" +   {indent}{branch}{short_type(r['type'])}", r["name"]))
            body = f"     {indent}{more}{'│  ' if children.get(r['name']) else '   '}"
            if key_inputs(r):
                lines.append(_fit(body + key_inputs(r)))
            notes = replace_notes(r)
            if notes:
                lines.extend(body + "» " + part for part in textwrap.wrap(notes, WIDTH - len(body) - 2))
            walk(r["name"], indent + more)

    walk(None, "")
    lines += ["", "Outputs:"]
    for name, value in sorted(outputs.items()):
        if isinstance(value, dict):
            lines.append(f"    {name}:")
            lines += [f"        {k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in sorted(value.items())]
        else:
            lines.append(f"    {name}: {value if isinstance(value, str) else json.dumps(value)}")
    lines += ["", "Resources:", f"    + {len(resources) + 1} to create", "",
              "» how a change would replace it (delete first, ignored inputs, triggers).",
              "Lookups answer with placeholders (account, zones, image); secrets show as",
              "[secret]; `--json` prints every input and option."]
    return "\n".join(lines)
