"""Thin commands over the library: run, check, ca init, grant open|close.

Bad input exits 2 with one line on stderr naming the file and key path; no traceback
(and never local variables: they may hold secrets).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys

try:
    import typer
except ImportError:  # a plain install is the policy schema only (docs/policy-schema.md)
    sys.exit("agentctl-proxy: running the proxy needs its server extra: pip install 'agentctl-proxy[server]'")

from agentctl_proxy.config import Config, ConfigError, load_checked

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False, no_args_is_help=True,
                  help="agentctl-proxy: the egress proxy of an agentctl deployment.")
ca_app = typer.Typer(pretty_exceptions_show_locals=False, no_args_is_help=True, help="Interception CA.")
app.add_typer(ca_app, name="ca")

ConfigOpt = typer.Option(..., "--config", "-c", help="Proxy config file (YAML).")


def _fail(message: str, code: int = 2) -> typer.Exit:
    print(message, file=sys.stderr)
    return typer.Exit(code)


def _load(path: str) -> tuple[Config, list[str]]:
    try:
        return load_checked(path)
    except ConfigError as e:
        raise _fail(str(e)) from None


def source_warnings(cfg: Config) -> list[str]:
    """One line per secret source that cannot be read now (never its value)."""
    from agentctl_proxy.policy import secret_label
    from agentctl_proxy.secrets import SecretUnavailable, fetch

    out = []
    owners = [("system", cfg.transforms)] + [(a.name, a.transforms) for a in cfg.agents or []]
    for owner, transforms in owners:
        for t in transforms:
            if t.name != "secrets":
                continue
            for i, s in enumerate(t.config.secrets):
                try:
                    fetch(s.source)
                except SecretUnavailable as e:
                    out.append(f"warning: secret {secret_label(s, owner, i)!r}: {e}")
                except Exception as e:
                    out.append(f"warning: secret {secret_label(s, owner, i)!r}: {type(e).__name__}")
    return out


@app.command()
def check(config: str = ConfigOpt) -> None:
    """Validate a config: exit 0, or 2 with the key path. Warns, one line each, where an
    iron-proxy config means more there than here, and about unreachable secret sources."""
    cfg, warnings = _load(config)
    for line in warnings + source_warnings(cfg):
        print(line, file=sys.stderr)
    print(f"{config}: ok")


@app.command()
def run(config: str = ConfigOpt, debug: bool = typer.Option(False, help="Verbose logs.")) -> None:
    """Run the proxy."""
    from agentctl_proxy.runner import ProxyApp

    cfg, warnings = _load(config)  # before logging is set up: a config problem is one line, exit 2
    level = logging.DEBUG if debug else _LEVELS[cfg.log.level]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not debug:  # one line per connection is the audit file's job, not the log's
        logging.getLogger("mitmproxy.proxy.server").setLevel(max(level, logging.WARNING))
    for line in warnings + source_warnings(cfg):
        print(line, file=sys.stderr)
    try:
        proxy = ProxyApp(config, cfg)  # opens the audit file
        asyncio.run(proxy.run())
    except ConfigError as e:
        raise _fail(str(e)) from None
    except _options_error() as e:  # what load_checked cannot see: one line, never mitmproxy's traceback
        raise _fail(f"{config}: cannot start: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    except OSError as e:
        raise _fail(f"{config}: cannot start: {e.strerror or e}", 1) from None


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


def _options_error() -> type[Exception]:
    from mitmproxy.exceptions import OptionsError

    return OptionsError


@ca_app.command("init")
def ca_init(directory: str = typer.Option(..., "--dir", help="Where to write ca.crt and ca.key.")) -> None:
    """Create a new interception CA (ca.crt, ca.key with mode 0600); never overwrites."""
    from agentctl_proxy.ca import CaError, init_ca

    try:
        cert, key = init_ca(directory)
    except CaError as e:
        raise _fail(str(e)) from None
    print(f"wrote {cert} and {key}")


grant_app = typer.Typer(help="Upgrade grants: time-boxed egress for one agent (root on the proxy host only).",
                        no_args_is_help=True)
app.add_typer(grant_app, name="grant")


def _grant_guard(agent: str) -> None:
    import re

    if os.geteuid() != 0:
        raise _fail("agentctl-proxy grant: must run as root on the proxy host (the operator's admin path)")
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,30}[a-z0-9]", agent):
        raise _fail(f"--agent: {agent!r} is not an agent name; expected a host name such as scout")


def _reload(reload: bool) -> None:
    # The proxy re-reads the grants on SIGHUP (the unit's ExecReload).
    if reload:
        proc = subprocess.run(["systemctl", "reload", "agentctl-proxy.service"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise _fail(f"agentctl-proxy grant: reloading the proxy failed: {proc.stderr.strip()[:200]}", 1)


@grant_app.command("open")
def grant_open(agent: str = typer.Option(..., "--agent"), run_id: str = typer.Option(..., "--run-id"),
               rule: list[str] = typer.Option(..., "--rule", help="A rule as JSON: {host, methods, paths[, ports]}."),
               minutes: float = typer.Option(30, "--minutes", help="Deadline: closed after this, whatever happens."),
               reload: bool = typer.Option(True, "--reload/--no-reload")) -> None:
    """Open AGENT's upgrade grant (closing any other of its grants); audited as AGENT/upgrade[i]."""
    from pydantic import ValidationError

    from agentctl_proxy.schema.errors import explain
    from agentctl_proxy.schema.policy import Rule
    from agentctl_proxy.upgrade_grants import open_grant

    _grant_guard(agent)
    example = '{"host": "pypi.org", "methods": ["GET"], "paths": ["/simple/*"]}'
    rules = []
    for i, text in enumerate(rule):
        try:
            data = json.loads(text)
        except ValueError:
            raise _fail(f"--rule[{i}]: is not JSON; expected JSON such as {example}") from None
        # A grant names what it opens: no iron-proxy default of every method and path here.
        missing = [k for k in ("host", "methods", "paths") if not isinstance(data, dict) or k not in data]
        if missing:
            raise _fail(f"--rule[{i}]: {missing[0]} is missing; a grant names its host, methods and paths, "
                        f"expected JSON such as {example}")
        try:
            rules.append(Rule.model_validate(data).model_dump(exclude_none=True))
        except ValidationError as e:
            problem = explain(e, Rule)
            where = f".{problem.key_path()}" if problem.loc else ""
            raise _fail(f"--rule[{i}]{where}: {problem.line()}") from None
    try:
        grant = open_grant(agent, run_id, rules, minutes)
    except ValueError as e:
        raise _fail(str(e)) from None
    _reload(reload)
    print(json.dumps({"agent": agent, "grant": "open", "run_id": run_id, "deadline": grant.deadline,
                      "rules": len(rules)}))


@grant_app.command("close")
def grant_close(agent: str = typer.Option(..., "--agent"),
                reload: bool = typer.Option(True, "--reload/--no-reload")) -> None:
    """Close AGENT's upgrade grants (idempotent)."""
    from agentctl_proxy.upgrade_grants import close_grant

    _grant_guard(agent)
    was_open = close_grant(agent)
    _reload(reload)
    print(json.dumps({"agent": agent, "grant": "closed", "was_open": was_open}))


def main() -> None:
    app()
