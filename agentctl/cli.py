"""The operator CLI: thin commands over the library. Domain errors become one line and
their exit code; tracebacks only with --debug; locals never printed (they hold secrets)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from agentctl.errors import AgentctlError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False, pretty_exceptions_enable=False, add_completion=False,
                  help="Dedicated hardened hosts for AI agents, with an egress proxy as their only way out.")

StackOpt = typer.Option(..., "--stack", help="Stack name: reads Pulumi.<stack>.yaml")
ProjectDirOpt = typer.Option(Path("."), "--project-dir", help="Folder that holds Pulumi.yaml and the stack files")


@app.command()
def render(stack: str = StackOpt, out: Path = typer.Option(..., "--out", help="Folder to write, one sub-folder per host"),
           project_dir: Path = ProjectDirOpt) -> None:
    """Write cloud-init user-data for every host, and the proxy config."""
    from agentctl.render import render_stack
    for host in render_stack(project_dir, stack, out):
        typer.echo(f"{out / host.name}  ({host.role}, {host.private_ip}, {len(host.user_data)} bytes of user-data)")


@app.command()
def plan(stack: str = StackOpt, json_out: bool = typer.Option(False, "--json", help="Print {type, name, inputs} as JSON"),
         project_dir: Path = ProjectDirOpt) -> None:
    """Evaluate the Pulumi program offline under Pulumi's mocks and show what it declares."""
    from agentctl.plan import run_plan
    run_plan(project_dir, stack, json_out)


@app.command()
def verify(stack: str = StackOpt, host: List[str] = typer.Option(..., "--host", help="NAME=SPEC, e.g. scout=paramiko://admin@10.0.2.11"),
           project_dir: Path = ProjectDirOpt, ssh_key: Optional[Path] = typer.Option(None, "--ssh-key", help="Private key for SSH"),
           junit_dir: Optional[Path] = typer.Option(None, "--junit-dir", help="Write each host's JUnit report to DIR/<host>.xml")) -> None:
    """Run each host's role suite (testinfra) against converged hosts."""
    from agentctl.verify import run_verify
    raise typer.Exit(run_verify(project_dir, stack, host, ssh_key, junit_dir=junit_dir))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def lab(ctx: typer.Context) -> None:
    """The local lab: up | verify | escape | down | status | ssh HOST (see: agentctl lab --help)."""
    # Imported only when used: the lab's modules cost a second that --help and render should not pay.
    from agentctl.lab.cli import app as lab_app
    group = typer.main.get_group(lab_app)  # a group: no completion options of its own
    group.main(args=ctx.args, prog_name=f"{ctx.find_root().info_name or 'agentctl'} lab")


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
