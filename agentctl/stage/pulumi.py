"""`agentctl stage` on a cloud stack (aws, hcloud), through Pulumi's Automation API
(pulumi.automation, a LocalWorkspace on this project; the state backend is the
user's, from the usual Pulumi settings). The Automation API drives the Pulumi CLI,
which the build machines cannot install: everything that needs it is in this
module and kept thin; the checks that come before it (credentials, the CLI itself)
are plain functions the tests run here.

Relied on (pulumi 3.x, pulumi/automation/): _cmd.py PulumiCommand runs `pulumi version`
(FileNotFoundError without the CLI); _local_workspace.py create_or_select_stack,
list_stacks (StackSummary.last_update, update_in_progress), remove_stack, set_tag and
list_tags (`pulumi stack tag set/ls --json`); Stack.outputs() (OutputValue.value);
_stack.py up/preview/destroy with on_output/on_event, PreviewResult.change_summary;
events.py EngineEvent.res_outputs_event.metadata (op, type, urn)."""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import yaml

from agentctl import sshtrust
from agentctl.errors import AgentctlError, ConfigError
from agentctl.model import Deployment
from agentctl.stage.names import STAGING_TAG, StackInfo
from agentctl.stage.results import Check, HostRow, StageResult, Suite

Progress = Callable[[str], None]
CONVERGED_LINE = "agentctl-converge: converged"  # templates/converge.sh.j2, echoed to the console
CONVERGE_TIMEOUT = 1200
INSTALL_HINT = "the Pulumi CLI on PATH (https://www.pulumi.com/docs/install/; in CI: pulumi/actions)"


class CloudStageError(AgentctlError):
    exit_code = 1


def require_cli() -> None:
    if shutil.which("pulumi") is None:
        raise ConfigError("pulumi", "", "the Pulumi CLI is not installed (the Automation API drives it)", INSTALL_HINT)


def credentials_problem(d: Deployment, stack_file: Path, env: dict[str, str]) -> str | None:
    """Why the cloud's credentials are missing, or None. Looked up the way the
    providers look them up, without calling the cloud."""
    if d.cloud == "aws":
        import boto3
        if boto3.Session(region_name=d.region).get_credentials() is None:
            return ("is 'aws', but boto3 finds no AWS credentials (environment, profile, web identity, "
                    "instance role)")
        return None
    if d.cloud == "hcloud":
        if env.get("HCLOUD_TOKEN"):
            return None
        config = (yaml.safe_load(stack_file.read_text()) or {}).get("config") or {}
        if config.get("hcloud:token"):
            return None
        return "is 'hcloud', but neither HCLOUD_TOKEN nor the stack's hcloud:token config is set"
    return f"is {d.cloud!r}, which stage cannot provision"


def list_stacks(ws) -> list[StackInfo]:
    return [StackInfo(s.name, s.last_update, bool(s.update_in_progress)) for s in ws.list_stacks()]


def with_tags(ws, names_: list[str]) -> list[StackInfo]:
    """The stacks' tags (one `pulumi stack tag ls` each: only for the stacks old enough)."""
    return [StackInfo(n, None, False, dict(ws.list_tags(n))) for n in names_]


def workspace(project_dir: Path):
    from pulumi import automation as auto
    return auto.LocalWorkspace(work_dir=str(Path(project_dir).resolve()))


def destroy(ws, name: str, out) -> bool:
    from pulumi import automation as auto
    try:
        stack = auto.select_stack(stack_name=name, work_dir=ws.work_dir)
        stack.destroy(on_output=lambda line: out.print(line, markup=False, highlight=False))
        ws.remove_stack(name)
        out.print(f"reaped {name}")
        return True
    except auto.errors.CommandError as exc:
        out.print(f"[red]could not reap {name}[/]: {str(exc).strip().splitlines()[-1][:300]}")
        return False


def changes(summary: dict) -> dict[str, int]:
    """A preview's change summary without the resources left as they are."""
    return {getattr(op, "value", str(op)): n for op, n in (summary or {}).items()
            if getattr(op, "value", str(op)) != "same" and n}


def instance_ids(outputs: dict) -> dict[str, str]:
    """host -> EC2 instance id, read from the stack's `ssh` output (the EC2 Instance
    Connect command per host, stacks/aws_deployment.py)."""
    ids = {}
    for host, cmd in (outputs.get("ssh") or {}).items():
        m = re.search(r"--instance-id (\S+)", str(cmd))
        if m:
            ids[host] = m.group(1)
    return ids


class CloudStage:
    def __init__(self, project_dir: Path, stack: str, d: Deployment):
        self.project_dir, self.stack, self.d = Path(project_dir), stack, d
        self.cloud = d.cloud
        self.outputs: dict = {}
        from agentctl.stage.cloud import Outside
        self.outside = Outside()
        self.suite_args: list[str] | None = None  # extra pytest arguments for the role suites

    @property
    def lock_path(self) -> Path:
        return self.project_dir / ".agentctl" / "stage" / f"{self.stack}.lock"

    def preflight(self) -> None:
        problem = credentials_problem(self.d, self.project_dir / f"Pulumi.{self.stack}.yaml", dict(os.environ))
        if problem:
            raise ConfigError(f"Pulumi.{self.stack}.yaml", "agentctl:cloud", problem,
                              "cloud credentials (docs/staging.md)")
        require_cli()

    def _stack(self):
        from pulumi import automation as auto
        try:
            return auto.create_or_select_stack(stack_name=self.stack, work_dir=str(self.project_dir.resolve()))
        except FileNotFoundError:  # PulumiCommand runs `pulumi version` first
            raise ConfigError("pulumi", "", "the Pulumi CLI is not installed", INSTALL_HINT) from None

    def up(self, progress: Progress) -> Suite:
        def on_event(ev) -> None:
            done = ev.res_outputs_event
            if done is not None:
                m = done.metadata
                progress(f"{getattr(m.op, 'value', m.op)} {m.type} {m.urn.rsplit('::', 1)[-1]}")

        stack = self._stack()
        # Before anything is made: what `stage reap` selects by, should this run die.
        from pulumi import automation as auto
        try:
            stack.workspace.set_tag(self.stack, STAGING_TAG, "true")
        except auto.errors.CommandError as exc:
            raise CloudStageError(f"stage: cannot tag stack {self.stack} {STAGING_TAG}=true, which `stage reap` "
                                  "selects by (stack tags need Pulumi Cloud or, on a self-managed backend, Pulumi "
                                  f"CLI 3.211.0 or later): {str(exc).strip().splitlines()[-1][:200]}") from None
        suite = Suite("converge")
        t0 = time.monotonic()
        stack.up(on_event=on_event, on_output=lambda _line: None)
        self.outputs = {k: v.value for k, v in stack.outputs().items()}
        suite.checks.append(Check("pulumi up", True, "converge", time.monotonic() - t0))
        suite.checks += self._wait_converged(progress)
        progress("a second preview (must show no changes)")
        t0 = time.monotonic()
        pending = changes(stack.preview(on_output=lambda _line: None).change_summary)
        suite.checks.append(Check("second preview shows no changes", not pending, "idempotence", time.monotonic() - t0,
                                  "" if not pending else f"the preview after up would change: {pending}"))
        return suite

    def host_names(self) -> list[str]:
        return [self.d.proxy.name] + [a.name for a in self.d.agents]

    def _wait_converged(self, progress: Progress) -> list[Check]:
        if self.cloud == "hcloud":
            # No console API on Hetzner: the converged marker, over SSH through the
            # admin path the stack documents (the proxy, then the agents behind it).
            from agentctl.stage import cloud
            try:
                access = self.access(progress)
            except AgentctlError as exc:
                return [Check(f"{n}: converged", False, "converge", message=str(exc)) for n in self.host_names()]
            return cloud.converged_over_ssh(access, self.host_names(), CONVERGE_TIMEOUT, progress)
        ids, checks = instance_ids(self.outputs), []
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        for n in self.host_names():
            progress(f"waiting for {n}'s cloud-init (console output)")
            t0, seen, text = time.monotonic(), False, ""
            while not seen and time.monotonic() < deadline and n in ids:
                text = self.console(ids[n])
                seen = CONVERGED_LINE in text
                if not seen:
                    time.sleep(15)
            if seen:
                self._pin_from_console(n, text)
            checks.append(Check(f"{n}: converged", seen, "converge", time.monotonic() - t0,
                                "" if seen else f"no {CONVERGED_LINE!r} on {n}'s console within {CONVERGE_TIMEOUT} s"))
        return checks

    def console(self, instance_id: str) -> str:
        import boto3
        ec2 = boto3.client("ec2", region_name=self.d.region)
        return ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output") or ""

    @property
    def known_hosts(self) -> Path:
        return sshtrust.known_hosts_file(self.project_dir, self.stack)

    def _pin_from_console(self, host: str, text: str) -> None:
        keys = sshtrust.console_keys(text)
        if keys:
            sshtrust.pin(self.known_hosts, host, keys)

    def load_outputs(self) -> dict:
        if not self.outputs:
            self.outputs = {k: v.value for k, v in self._stack().outputs().items()}
        return self.outputs

    def access(self, progress: Progress):
        """The stack's admin path with every key that can be pinned pinned: AWS from the
        console output, Hetzner's proxy from the proxyHostKey output (agents behind it:
        recorded on first contact through the pinned proxy, docs/ssh-host-keys.md)."""
        from agentctl.stage import adminpath, cloud
        outputs = self.load_outputs()
        routes = adminpath.routes(outputs, self.host_names())
        pinned = sshtrust._load(self.known_hosts)
        if self.cloud == "aws":
            ids = instance_ids(outputs)
            for n in self.host_names():
                if n not in pinned and n in ids:
                    progress(f"pinning {n}'s host keys from its console output")
                    self._pin_from_console(n, self.console(ids[n]))
            first_contact = "refuse"
        else:
            proxy = self.d.proxy.name
            if proxy not in pinned:
                fp = outputs.get("proxyHostKey")
                if not fp:
                    raise CloudStageError(f"stage: the stack's outputs have no proxyHostKey to pin {proxy}'s SSH "
                                          "host key by; refusing to log in")
                progress(f"pinning {proxy}'s host key (proxyHostKey {fp})")
                adminpath.pin_by_fingerprint(self.known_hosts, routes[proxy], str(fp))
            first_contact = "record"
        return cloud.Access(routes, self.known_hosts, first_contact, cloud.key_filename())

    def hosts(self) -> list[HostRow]:
        private = self.outputs.get("agentPrivateIps") or {}
        rows = [HostRow(self.d.proxy.name, "proxy", str(self.outputs.get("proxyPublicIp", self.d.proxy_ip)), "deployed")]
        return rows + [HostRow(a.name, "agent", str(private.get(a.name, self.d.agent_ip(a))), "deployed")
                       for a in self.d.agents]

    def verify(self, work_dir: Path, progress: Progress) -> StageResult:
        """Every host's role suite, then the escape attempts from each agent host, all
        over the admin path with pinned keys; on AWS the flow log's rejects as evidence."""
        from agentctl.stage import cloud
        access = self.access(progress)
        result = StageResult(self.stack, self.cloud, hosts=self.hosts())
        progress("role suites (over the admin path)")
        result.suites += cloud.run_suites(self.project_dir, self.stack, access, self.host_names(),
                                          work_dir / "role-suites", self.suite_args)
        suites, rows = cloud.run_escape(self.d, self.outputs, access, self.outside, self.flow_log(), progress)
        result.suites += suites
        result.escapes += rows
        return result

    def flow_log(self):
        """AWS stacks send the agent subnet's rejects to CloudWatch Logs (stacks/aws_deployment.py)."""
        if self.cloud != "aws":
            return None
        import boto3
        from agentctl.stage import cloud
        project = (yaml.safe_load((self.project_dir / "Pulumi.yaml").read_text()) or {}).get("name", "agentctl")
        return cloud.FlowLog(boto3.client("logs", region_name=self.d.region), cloud.flow_log_group(project, self.stack))

    def down(self, progress: Progress) -> list[str]:
        stack = self._stack()
        progress(f"pulumi destroy {self.stack}")
        stack.destroy(on_output=lambda _line: None)
        stack.workspace.remove_stack(self.stack)
        return []
