"""`agentctl stage up | verify | down | run | reap`: the staging pipeline. Thin
commands over a driver per kind of stack (agentctl.stage.lab, agentctl.stage.pulumi);
every command checks its input and the machine first (exit 2, one line, nothing
made), then takes the stack's lock for its whole run."""
from __future__ import annotations

import os
import signal
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from agentctl.errors import ConfigError
from agentctl.lab import image, state
from agentctl.lab.cli import steps
from agentctl.stage import names, report
from agentctl.stage.lock import stack_lock
from agentctl.stage.results import StageResult, Suite
from agentctl.stackfile import load

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="The staging pipeline: provision a stack, verify it, destroy it.")
out = Console(width=None if sys.stdout.isatty() else 160)

StackOpt = typer.Option(None, "--stack", help="Stack (Pulumi.<stack>.yaml); default: from the CI environment, "
                                              "e.g. staging-pr-123 on a pull request")
ProjectDirOpt = typer.Option(Path("."), "--project-dir", help="Folder that holds Pulumi.yaml and the stack files")
StateDirOpt = typer.Option(state.DEFAULT_STATE_DIR, "--state-dir", envvar="AGENTCTL_LAB_STATE",
                           help="lab stacks: the lab's state folder")
CacheDirOpt = typer.Option(image.DEFAULT_CACHE_DIR, "--cache-dir", envvar="AGENTCTL_LAB_CACHE",
                           help="lab stacks: where lab images are cached")
ReportOpt = typer.Option(None, "--report", help="Write DIR/junit.xml and DIR/summary.md "
                                                "(and append the summary to $GITHUB_STEP_SUMMARY)")


def driver(stack: Optional[str], project_dir: Path, state_dir: Path, cache_dir: Path):
    """The stack's driver, after every check that needs no change to anything."""
    name = names.stack_name(stack, dict(os.environ))
    d = load(project_dir, name)
    if d.cloud == "lab":
        from agentctl.stage.lab import LabStage
        drv = LabStage(project_dir, name, d, state_dir, cache_dir)
    else:
        from agentctl.stage.pulumi import CloudStage
        drv = CloudStage(project_dir, name, d)
    drv.preflight()
    return drv


def _terminate_as_exit(signum, _frame) -> None:
    # A cancelled CI job gets SIGTERM: unwind through `finally`, so `run` still tears down.
    raise SystemExit(128 + signum)


def _up(drv) -> Suite:
    with steps() as progress:
        suite = drv.up(progress)
    for c in suite.checks:
        out.print(f"{'[green]ok[/]' if c.ok else '[red]FAILED[/]'}  {c.name}" + (f": {c.message}" if c.message else ""))
    return suite


def _verify(drv, report_dir: Optional[Path], before: list[Suite] = ()) -> StageResult:
    with tempfile.TemporaryDirectory(prefix="agentctl-stage-") as work, steps() as progress:
        result = drv.verify(Path(work), progress)
    result.suites[:0] = list(before)
    _show(result, report_dir)
    return result


def _show(result: StageResult, report_dir: Optional[Path]) -> None:
    for s in result.suites:
        out.print(f"{s.name}: {len(s.passed)} passed, {len(s.failed)} failed, {len(s.skipped)} skipped")
        for c in s.failed:
            out.print(f"  [red]FAILED[/] {c.name}: {c.message}")
    if report_dir is not None:
        for p in report.write(result, report_dir):
            out.print(f"report: {p}")
    passed = sum(len(s.passed) for s in result.suites)
    failed = sum(len(s.failed) for s in result.suites)
    out.print(f"stage {result.stack}: {'passed' if result.ok else 'FAILED'} ({passed} checks passed, {failed} failed)")


def _down(drv) -> int:
    with steps() as progress:
        leftovers = drv.down(progress)
    if leftovers:
        out.print("[red]left behind:[/] " + "; ".join(leftovers))
        return 1
    out.print(f"stage {drv.stack}: down, nothing left behind")
    return 0


@app.command()
def up(stack: Optional[str] = StackOpt, project_dir: Path = ProjectDirOpt, state_dir: Path = StateDirOpt,
       cache_dir: Path = CacheDirOpt) -> None:
    """Provision the stack and wait until every host has converged."""
    drv = driver(stack, project_dir, state_dir, cache_dir)
    with stack_lock(drv.lock_path, drv.stack):
        raise typer.Exit(0 if not _up(drv).failed else 1)


@app.command()
def verify(stack: Optional[str] = StackOpt, project_dir: Path = ProjectDirOpt, state_dir: Path = StateDirOpt,
           cache_dir: Path = CacheDirOpt, report_dir: Optional[Path] = ReportOpt) -> None:
    """Role suites on every host, escape attempts from each agent host, idempotence."""
    drv = driver(stack, project_dir, state_dir, cache_dir)
    with stack_lock(drv.lock_path, drv.stack):
        raise typer.Exit(0 if _verify(drv, report_dir).ok else 1)


@app.command()
def down(stack: Optional[str] = StackOpt, project_dir: Path = ProjectDirOpt, state_dir: Path = StateDirOpt,
         cache_dir: Path = CacheDirOpt) -> None:
    """Destroy the stack."""
    drv = driver(stack, project_dir, state_dir, cache_dir)
    with stack_lock(drv.lock_path, drv.stack):
        raise typer.Exit(_down(drv))


@app.command()
def run(stack: Optional[str] = StackOpt, project_dir: Path = ProjectDirOpt, state_dir: Path = StateDirOpt,
        cache_dir: Path = CacheDirOpt, report_dir: Optional[Path] = ReportOpt,
        keep_on_failure: bool = typer.Option(False, "--keep-on-failure",
                                             help="Leave the stack up when a step fails, to look at it")) -> None:
    """up, verify, down; down always runs (a failure, an error, SIGTERM), unless
    --keep-on-failure and something failed."""
    drv = driver(stack, project_dir, state_dir, cache_dir)
    signal.signal(signal.SIGTERM, _terminate_as_exit)
    ok = False
    with stack_lock(drv.lock_path, drv.stack):
        try:
            converge = _up(drv)
            if converge.failed:
                result = StageResult(drv.stack, drv.cloud, hosts=drv.hosts(), suites=[converge])
                _show(result, report_dir)
            else:
                result = _verify(drv, report_dir, before=[converge])
            ok = result.ok
        finally:
            if ok or not keep_on_failure:
                down_rc = _down(drv)
            else:
                down_rc = 0
                out.print(f"stage {drv.stack}: [yellow]kept up[/] (--keep-on-failure); "
                          f"agentctl stage down --stack {drv.stack} when done")
    raise typer.Exit(0 if ok and down_rc == 0 else 1)


@app.command()
def reap(older_than: str = typer.Option("6h", "--older-than", help="Age of the last update, e.g. 6h, 2d"),
         project_dir: Path = ProjectDirOpt,
         dry_run: bool = typer.Option(False, "--dry-run", help="List what would be destroyed, destroy nothing")) -> None:
    """Destroy the staging stacks `stage up` made (its stack tag, agentctl-staging=true) and
    left behind: last update older than --older-than. Selected by the tag only."""
    try:
        age = names.parse_age(older_than)
    except ValueError as exc:
        raise ConfigError("--older-than", older_than, str(exc), "a number and s, m, h or d, e.g. 6h") from None
    from agentctl.stage import pulumi as stage_pulumi
    stage_pulumi.require_cli()
    ws = stage_pulumi.workspace(project_dir)
    old = names.stale(stage_pulumi.list_stacks(ws), datetime.now(timezone.utc), age)
    doomed = [s.name for s in stage_pulumi.with_tags(ws, old) if names.made_by_stage(s)]
    out.print(f"{len(doomed)} staging stack(s) (tag {names.STAGING_TAG}=true) last updated more than {older_than} ago"
              + (": " + ", ".join(doomed) if doomed else ""))
    failed = 0
    for name in doomed if not dry_run else []:
        failed += not stage_pulumi.destroy(ws, name, out)
    raise typer.Exit(1 if failed else 0)
