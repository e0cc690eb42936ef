"""`agentctl lab ...`: thin commands over agentctl.lab.lab (converge, verify, escape,
destroy), with rich progress for the long steps."""
from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape as escape_markup
from rich.table import Table

from agentctl.lab import image, state, vm

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="The local lab: the whole deployment on this machine (systemd-nspawn, no route out).")
console = Console(stderr=True)
# Piped (CI logs): wide enough that the tables stay readable.
out = Console(width=None if sys.stdout.isatty() else 160)

StackOpt = typer.Option("lab", "--stack", help="Stack name: reads Pulumi.<stack>.yaml (cloud: lab)")
ProjectDirOpt = typer.Option(Path("."), "--project-dir", help="Folder that holds Pulumi.yaml and the stack files")
StateDirOpt = typer.Option(state.DEFAULT_STATE_DIR, "--state-dir", envvar="AGENTCTL_LAB_STATE",
                           help="Where the lab keeps keys, CAs, host overlays and what it started")
CacheDirOpt = typer.Option(image.DEFAULT_CACHE_DIR, "--cache-dir", envvar="AGENTCTL_LAB_CACHE",
                           help="Where lab images are cached (keyed by package list and week)")


@contextmanager
def steps() -> Iterator:
    """A spinner whose text follows the current step; each finished step is printed with its time."""
    t = [time.monotonic(), None]
    with console.status("lab") as status:
        def progress(msg: str) -> None:
            msg = escape_markup(msg)  # a step names requirements: `pkg[extra]` is not markup
            if t[1]:
                console.print(f"  [green]✓[/] {t[1]} [dim]({time.monotonic() - t[0]:.1f} s)[/]")
            t[0], t[1] = time.monotonic(), msg
            status.update(msg)
        yield progress
        progress("")


def _bad_flag(message: str) -> None:
    print(f"agentctl lab: {message}", file=sys.stderr)
    raise typer.Exit(2)


@app.command()
def up(stack: str = StackOpt, project_dir: Path = ProjectDirOpt, state_dir: Path = StateDirOpt,
       cache_dir: Path = CacheDirOpt,
       distro: Optional[str] = typer.Option(None, "--distro", help="Override the stack's distro: debian-12 or ubuntu-24.04"),
       hosts: str = typer.Option("container", "--hosts",
                                 help="container (systemd-nspawn, fast) or vm (QEMU: the hosts' own kernels)"),
       timeout: Optional[float] = typer.Option(None, "--timeout",
                                               help="Seconds to wait for each host's cloud-init "
                                                    "(default 240; 900 for VMs)")) -> None:
    """Build the image if missing, create the networks, boot and converge every host."""
    from agentctl.lab import lab
    if distro is not None and distro not in image.DISTROS:
        _bad_flag(f"--distro {distro!r} is not known; expected one of {', '.join(image.DISTROS)}")
    if hosts not in lab.HOST_KINDS:
        _bad_flag(f"--hosts {hosts!r} is not known; expected container or vm")
    if hosts == "vm" and shutil.which(vm.QEMU) is None:
        _bad_flag(f"--hosts vm needs {vm.QEMU} (Debian: apt install qemu-system-x86; ./dev setup installs it)")
    with steps() as progress:
        result = lab.up(project_dir, stack, state_dir, cache_dir, progress, distro=distro, boot_timeout=timeout,
                        host_kind=hosts)
    if result.already_up:
        out.print(f"lab {stack} is already up (image {result.image.name}); `agentctl lab down` first to rebuild")
        return
    table = Table(title=f"lab {stack} up in {result.seconds:.1f} s (image {result.image.name})")
    for col in ("host", "role", "address", "cloud-init", "service"):
        table.add_column(col)
    for h in result.hosts:
        svc = ", ".join(f"{k} {v}" for k, v in h.services.items()) or "-"
        table.add_row(h.name, h.role, h.ip, "[green]done[/]" if h.converged else f"[red]{h.detail}[/]",
                      svc if "inactive" not in svc and "failed" not in svc else f"[red]{svc}[/]")
    out.print(table)
    if not result.ok:
        from agentctl.lab.hosts import console_tail
        for h in result.hosts:
            if not h.converged:
                # the console is what says why; a CI run's state dir is gone by the time anyone looks
                out.print(f"[bold]{h.name}: the last lines of its console[/]", markup=True)
                out.print("\n".join(console_tail(state_dir, h.name)), markup=False, highlight=False)
        out.print(f"[red]some hosts did not converge[/]; look at {state_dir}/hosts/<host>/console.log")
        raise typer.Exit(1)


@app.command()
def down(state_dir: Path = StateDirOpt) -> None:
    """Stop every lab process, unmount, delete the namespaces and their rules."""
    from agentctl.lab import lab
    with steps() as progress:
        report = lab.down(state_dir, progress)
    out.print(f"lab down: {len(report.stopped)} processes stopped, {len(report.unmounted)} mounts removed, "
              f"{len(report.namespaces)} namespaces deleted")
    if report.leftovers:
        out.print("[red]left behind:[/] " + "; ".join(report.leftovers))
        raise typer.Exit(1)


@app.command()
def status(stack: str = StackOpt, project_dir: Path = ProjectDirOpt, state_dir: Path = StateDirOpt) -> None:
    """What is up: hosts, cloud-init, services, namespaces, and the no-route check."""
    from agentctl.lab import lab
    st = lab.status(project_dir, stack, state_dir)
    table = Table(title=f"lab {stack}: {'up' if st.up else 'down'}")
    for col in ("host", "address", "state", "cloud-init", "service"):
        table.add_column(col)
    for name, row in st.hosts.items():
        table.add_row(name, row["ip"], row["state"], row.get("cloud_init", "-"), row.get("service", "-"))
    out.print(table)
    out.print(f"namespaces: {', '.join(st.namespaces) or 'none'}")
    out.print(f"processes: {', '.join(f'{w} ({p})' for p, w in st.processes.items()) or 'none'}")
    out.print(f"mounts: {len(st.mounts)}")
    if st.route_leaks:
        out.print("[red]routes out of the lab:[/] " + "; ".join(st.route_leaks))
        raise typer.Exit(1)
    out.print("routes: every lab namespace routes only lab prefixes")
    if not st.up:
        raise typer.Exit(3)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(ctx: typer.Context, host: str = typer.Argument(..., help="A host of the stack (proxy, scout, ...)"),
        stack: str = StackOpt, project_dir: Path = ProjectDirOpt, state_dir: Path = StateDirOpt,
        user: str = typer.Option("admin", "--user", help="admin or operator")) -> None:
    """SSH to a lab host as admin, from the lab's admin namespace. Extra args: a command."""
    from agentctl.lab import lab
    d = lab.load_lab(project_dir, stack, state_dir)
    if user not in ("admin", "operator"):
        _bad_flag(f"--user {user!r}: expected admin or operator (the only SSH users)")
    argv = lab.ssh_argv(d, state_dir, host, list(ctx.args), user=user)
    os.execvp(argv[0], argv)


@app.command()
def verify(stack: str = StackOpt, project_dir: Path = ProjectDirOpt, state_dir: Path = StateDirOpt,
           score: bool = typer.Option(False, "--score", help="Also run lynis (inside each host) and ssh-audit")) -> None:
    """Run each host's role suite (agentctl verify) from the admin namespace."""
    from agentctl.lab import verify as lab_verify
    raise typer.Exit(lab_verify.run(project_dir, stack, state_dir, score, out))


@app.command()
def escape(stack: str = StackOpt, project_dir: Path = ProjectDirOpt, state_dir: Path = StateDirOpt,
           agent: Optional[str] = typer.Option(None, "--agent", help="Agent host to escape from (default: each)"),
           json_out: bool = typer.Option(False, "--json", help="Print the results as JSON")) -> None:
    """As agentuser on an agent host, try every escape vector; exit 1 if any succeeds."""
    from agentctl.lab import escape as lab_escape
    raise typer.Exit(lab_escape.run(project_dir, stack, state_dir, agent, json_out, out))
