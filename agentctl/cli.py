"""The operator CLI: thin commands over the library. Domain errors become one line and
their exit code; tracebacks only with --debug; locals never printed (they hold secrets)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from agentctl.errors import AgentctlError, ConfigError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False, pretty_exceptions_enable=False, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Dedicated hardened hosts for AI agents, with an egress proxy as their only way out.")

StackOpt = typer.Option(..., "--stack", help="Stack name: reads Pulumi.<stack>.yaml")
ProjectDirOpt = typer.Option(Path("."), "--project-dir", help="Folder that holds Pulumi.yaml and the stack files")
# The admin paths (agentctl/sshtrust.py admin_path): verify and snapshot-upgrade take them alike.
JumpOpt = typer.Option(None, "--jump", help="Jump host, [NAME=]USER@ADDRESS[:PORT], e.g. proxy=admin@203.0.113.10 "
                       "(its host key is checked too, under NAME)")
ProxyCommandOpt = typer.Option(None, "--proxy-command", help="ProxyCommand carrying the SSH connection (%h, %p), "
                               "e.g. the EC2 Instance Connect Endpoint's 'aws ec2-instance-connect open-tunnel "
                               "--instance-id i-... --remote-port %p'")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version
        typer.echo(f"agentctl {version('agentctl')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit"),
    debug: bool = typer.Option(False, "--debug", help="On an error, print the traceback too (before or after the "
                               "command; never shows local variables)"),
) -> None:
    # --debug is read by main() before the command runs (it decides how errors end);
    # it is declared here so that --help lists it.
    del version, debug


@app.command()
def render(stack: str = StackOpt, out: Path = typer.Option(..., "--out", help="Folder to write, one sub-folder per host"),
           project_dir: Path = ProjectDirOpt) -> None:
    """Write cloud-init user-data for every host, and the proxy config."""
    from agentctl.render import render_stack
    for host in render_stack(project_dir, stack, out):
        typer.echo(f"{out / host.name}  ({host.role}, {host.private_ip}, {len(host.user_data)} bytes of user-data)")


@app.command()
def plan(stack: str = StackOpt, json_out: bool = typer.Option(
             False, "--json", help="Print every resource as JSON: {type, name, inputs, options}, where options are "
             "the resource options a real `pulumi up` acts on (parent, dependsOn, deleteBeforeReplace, "
             "replaceOnChanges, ignoreChanges, protect, provider, replacementTrigger)"),
         project_dir: Path = ProjectDirOpt) -> None:
    """Evaluate the Pulumi program offline under Pulumi's mocks and show what it declares."""
    from agentctl.plan import run_plan
    run_plan(project_dir, stack, json_out)


@app.command()
def verify(stack: str = StackOpt, host: List[str] = typer.Option(..., "--host", help="NAME=SPEC, e.g. scout=paramiko://admin@10.0.2.11"),
           project_dir: Path = ProjectDirOpt, ssh_key: Optional[Path] = typer.Option(None, "--ssh-key", help="Private key for SSH"),
           jump: Optional[str] = JumpOpt, proxy_command: Optional[str] = ProxyCommandOpt,
           first_contact: Optional[str] = typer.Option(None, "--first-contact", help="A host with no pinned key: "
                                                       "refuse, or record its key (default: record on Hetzner only)"),
           known_hosts: Optional[Path] = typer.Option(None, "--known-hosts", help="Pinned host keys (default: "
                                                      ".agentctl/<stack>/known_hosts)"),
           junit_dir: Optional[Path] = typer.Option(None, "--junit-dir", help="Write each host's JUnit report to DIR/<host>.xml"),
           distro: Optional[str] = typer.Option(None, "--distro", help="The distro the hosts run when not the "
                                                "stack's (the lab's `lab up --distro`)")) -> None:
    """Run each host's role suite (testinfra) against converged hosts; SSH host keys must be the pinned ones."""
    from agentctl import sshtrust
    from agentctl.verify import Trust, run_verify
    trust = Trust(known_hosts or sshtrust.known_hosts_file(project_dir, stack), first_contact, jump, proxy_command)
    raise typer.Exit(run_verify(project_dir, stack, host, ssh_key, trust=trust, junit_dir=junit_dir, distro=distro))


@app.command("hostkeys")
def hostkeys(stack: str = StackOpt, host: str = typer.Option(..., "--host", help="The stack's host NAME the keys belong to"),
             console: Path = typer.Option(..., "--console", help="cloud-init's console output ('-' for stdin), "
                                          "e.g. from: aws ec2 get-console-output --latest --output text --instance-id i-..."),
             project_dir: Path = ProjectDirOpt,
             known_hosts: Optional[Path] = typer.Option(None, "--known-hosts", help="Default: .agentctl/<stack>/known_hosts")) -> None:
    """Pin a host's SSH keys from the host keys cloud-init printed to its console."""
    from agentctl import sshtrust
    from agentctl.stackfile import load
    d = load(project_dir, stack)
    names = [d.proxy.name, *(a.name for a in d.agents)]
    if host not in names:
        raise ConfigError("--host", host, "is not a host of this stack", f"one of {', '.join(names)}")
    try:
        text = sys.stdin.read() if str(console) == "-" else console.read_text(errors="replace")
    except OSError as exc:
        raise ConfigError("--console", str(console), f"cannot be read ({exc.strerror})", "a file, or - for stdin") from None
    path = known_hosts or sshtrust.known_hosts_file(project_dir, stack)
    try:
        pinned = sshtrust.pin(path, host, sshtrust.console_keys(text))
    except OSError as exc:
        raise ConfigError("--known-hosts", str(path), f"cannot be written ({exc.strerror or exc})",
                          "a file in a folder that can be written") from None
    for fp in pinned:
        typer.echo(f"{host}: pinned {fp} in {path}")


@app.command("snapshot-upgrade")
def snapshot_upgrade(
        stack: str = StackOpt, host: str = typer.Option(..., "--host", help="The agent host to upgrade"),
        to: Optional[str] = typer.Option(None, "--to", help="The runtime version to install (exact, e.g. 1.1.0)"),
        check: List[str] = typer.Option([], "--check", help="A command run on the host as admin; must exit 0 "
                                         "(repeatable)"),
        keep: int = typer.Option(3, "--keep", help="Snapshots of this host to keep (this project's only)"),
        resume: bool = typer.Option(False, "--resume", help="Finish this host's interrupted run"),
        rollback: bool = typer.Option(False, "--rollback", help="Roll back the unfinished run, or the last upgrade"),
        yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation"),
        json_out: bool = typer.Option(False, "--json", help="Last stdout line: one JSON object with the outcome"),
        project_dir: Path = ProjectDirOpt,
        address: Optional[str] = typer.Option(None, "--address", help="Cloud: the agent's admin SSH address (with "
                                              "--jump: as the jump host reaches it)"),
        proxy_address: Optional[str] = typer.Option(None, "--proxy-address", help="Cloud: the proxy host's (default "
                                                    "with --jump PROXY=...: the jump host's)"),
        jump: Optional[str] = JumpOpt, proxy_command: Optional[str] = ProxyCommandOpt,
        ssh_key: Optional[Path] = typer.Option(None, "--ssh-key", help="Private key for SSH as admin"),
        state_dir: Optional[Path] = typer.Option(None, "--state-dir", envvar="AGENTCTL_LAB_STATE",
                                                 help="Lab: its state folder")) -> None:
    """Snapshot an agent host, upgrade its runtime, accept the new version or roll back to the snapshot."""
    from agentctl.upgrade.command import snapshot_upgrade as run
    raise typer.Exit(run(project_dir=project_dir, stack=stack, host=host, to=to, checks=check, keep=keep,
                         resume=resume, rollback=rollback, yes=yes, json_out=json_out, state_dir=state_dir,
                         address=address, proxy_address=proxy_address, ssh_key=ssh_key, jump=jump,
                         proxy_command=proxy_command))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def lab(ctx: typer.Context) -> None:
    """The local lab: up | verify | escape | down | status | ssh HOST (see: agentctl lab --help)."""
    # Imported only when used: the lab's modules cost a second that --help and render should not pay.
    from agentctl.lab.cli import app as lab_app
    group = typer.main.get_group(lab_app)  # a group: no completion options of its own
    group.main(args=ctx.args, prog_name=f"{ctx.find_root().info_name or 'agentctl'} lab",
               help_option_names=["-h", "--help"])  # inherited by its subcommands


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def stage(ctx: typer.Context) -> None:
    """The staging pipeline: up | verify | down | run | reap (see: agentctl stage --help)."""
    from agentctl.stage.cli import app as stage_app  # imported when used, like lab
    typer.main.get_group(stage_app).main(args=ctx.args, prog_name=f"{ctx.find_root().info_name or 'agentctl'} stage")


def main() -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()
    except AgentctlError as exc:
        if debug:
            raise
        print(f"agentctl: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: say what, keep locals (secrets) out of sight
        if debug:
            raise
        print(f"agentctl: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
