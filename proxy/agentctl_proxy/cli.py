"""Thin commands over the library: run, check, ca init.

Bad input exits 2 with one line on stderr naming the file and key path; no traceback
(and never local variables: they may hold secrets).
"""

from __future__ import annotations

import asyncio
import logging
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


def main() -> None:
    app()
