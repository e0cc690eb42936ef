"""`run`: mitmproxy as a library, our addon deciding, SIGHUP reloading atomically."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import certifi

# passlib (imported by mitmproxy's addon package) logs a traceback about bcrypt>=4's
# missing __about__ at import time; it is harmless and would drown real errors.
logging.getLogger("passlib").setLevel(logging.ERROR)

from mitmproxy import options as mopts
from mitmproxy.addons import core, errorcheck, proxyserver, tlsconfig
from mitmproxy.master import Master

from agentctl_proxy import dns_server, health, internals, pki
from agentctl_proxy.addon import EgressAddon
from agentctl_proxy.audit import AuditLog
from agentctl_proxy.config import Config, ConfigError, load_config, parse_listen
from agentctl_proxy.runtime import Runtime
from agentctl_proxy.secrets import SecretUnavailable, fetch

log = logging.getLogger("agentctl_proxy")
SYSTEM_ROOTS = "/etc/ssl/certs/ca-certificates.crt"
# nothing outside the proxy's own decisions reaches these placeholder upstreams:
# connections are lazy and every upstream address is set by the addon
_PLACEHOLDER = "upstream.invalid"


def _hostport(listen: str) -> str:
    host, port = parse_listen(listen)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def modes(cfg: Config) -> list[str]:
    p = cfg.proxy
    out = [f"regular@{_hostport(p.tunnel_listen)}"] if p.tunnel_listen else []  # optional, as in iron-proxy
    if p.https_listen:
        out.append(f"reverse:https://{_PLACEHOLDER}:443@{_hostport(p.https_listen)}")
    if p.http_listen:
        out.append(f"reverse:http://{_PLACEHOLDER}:80@{_hostport(p.http_listen)}")
    return out


def ca_key_pem(cfg: Config, source: str) -> bytes:
    if cfg.tls.ca_key is not None:
        return Path(cfg.tls.ca_key).read_bytes()  # parsed and matched by load_config
    assert cfg.tls.ca_key_source is not None
    try:
        key = fetch(cfg.tls.ca_key_source).encode() + b"\n"
        # only now can the fetched key be checked against the certificate
        pki.check_ca_key(pki.load_ca_cert(Path(cfg.tls.ca_cert).read_bytes()), key)
    except (SecretUnavailable, ValueError) as e:
        raise ConfigError(f"{source}: tls.ca_key_source: {e}") from None
    return key


CONFDIR_PREFIX = "agentctl-proxy-"
_OWNER = "owner"  # in each confdir: "<pid> <start time>" of the proxy that made it


def _process_id(pid: int) -> str | None:
    """"<pid> <start time in clock ticks>" (/proc/PID/stat field 22), None if no such
    process: a pid alone could have been reused by another process since."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid} {stat.rpartition(')')[2].split()[19]}"


def remove_stale_confdirs(base: str | None) -> list[Path]:
    """Remove the confdirs (each holds a copy of the CA key) that proxies killed without
    cleaning up (SIGKILL, OOM) left behind: ours (same uid), whose owner is gone. A dir
    without an owner file is stale once a minute old (one being made has it at once)."""
    removed = []
    root = Path(base or tempfile.gettempdir())
    for d in root.glob(CONFDIR_PREFIX + "*"):
        try:
            st = d.lstat()
            if not d.is_dir() or d.is_symlink() or st.st_uid != os.getuid():
                continue
            try:
                owner = (d / _OWNER).read_text().strip()
            except FileNotFoundError:
                owner = None
            if owner is None and time.time() - st.st_mtime < 60:
                continue
            if owner is not None and _process_id(int(owner.split()[0])) == owner:
                continue  # a running proxy's
        except (OSError, ValueError, IndexError):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def prepare_confdir(cfg: Config, source: str) -> Path:
    """A private directory (tmpfs when there is one) with mitmproxy's CA file and trust bundle."""
    key = ca_key_pem(cfg, source)  # before the directory exists: a bad key leaves nothing behind
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    for stale in remove_stale_confdirs(base):
        log.warning("removed %s, left behind by a proxy that was killed", stale)
    d = Path(tempfile.mkdtemp(prefix=CONFDIR_PREFIX, dir=base))  # 0700
    (d / _OWNER).write_text((_process_id(os.getpid()) or str(os.getpid())) + "\n")
    fd = os.open(d / "mitmproxy-ca.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.rstrip() + b"\n" + Path(cfg.tls.ca_cert).read_bytes())
    with open(d / "upstream-roots.pem", "wb") as f:
        f.write(Path(certifi.where()).read_bytes())
        if os.path.exists(SYSTEM_ROOTS):
            f.write(b"\n" + Path(SYSTEM_ROOTS).read_bytes())
        if cfg.tls.upstream_ca_bundle:
            f.write(b"\n" + Path(cfg.tls.upstream_ca_bundle).read_bytes())
    return d


def option_values(cfg: Config, confdir: Path) -> dict:
    return dict(
        mode=modes(cfg),
        confdir=str(confdir),
        connection_strategy="lazy",  # never connect upstream before the policy said yes
        upstream_cert=False,
        rawtcp=False,
        http3=False,
        keep_host_header=True,  # DNS mode routes by the client's Host; never rewrite it
        ssl_insecure=False,
        ssl_verify_upstream_trusted_ca=str(confdir / "upstream-roots.pem"),
        validate_inbound_headers=True,
    )


class ProxyApp:
    def __init__(self, config_path: str, cfg: Config) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.audit = AuditLog(cfg.log.audit_path)
        self.addon = EgressAddon(Runtime.build(cfg), self.audit)
        self.reloads = 0
        self.extra_servers: list = []
        self.master: Master | None = None  # while run() runs

    def status(self) -> dict:
        rt = self.addon.rt
        return {"agents": sorted(rt.policy.identities), "reloads": self.reloads,
                "bootstrap_closed": sorted(rt.policy.closed)}

    def reload(self) -> bool:
        """Swap in a new config as one object, or keep the old one and say why."""
        try:
            cfg = load_config(self.config_path)
            rt = Runtime.build(cfg, previous=self.addon.rt)
        except ConfigError as e:
            log.error("reload refused, still serving the previous config: %s", e)
            return False
        except Exception as e:  # a reload must never take the proxy down
            log.error("reload refused, still serving the previous config: %s", type(e).__name__)
            return False
        restart_needed = [k for k in ("tunnel_listen", "https_listen", "http_listen", "health_listen")
                          if getattr(cfg.proxy, k) != getattr(self.cfg.proxy, k)]
        if cfg.dns != self.cfg.dns and (cfg.dns is None or self.cfg.dns is None or cfg.dns.listen != self.cfg.dns.listen):
            restart_needed.append("dns.listen")
        if cfg.tls != self.cfg.tls:
            restart_needed.append("tls")
        if restart_needed:
            log.warning("reload: %s changed; takes effect at the next restart", ", ".join(restart_needed))
        if cfg.log.audit_path != self.cfg.log.audit_path:
            old, self.audit = self.audit, AuditLog(cfg.log.audit_path)
            self.addon.audit = self.audit
            old.close()
        else:
            self.audit.reopen()  # SIGHUP is also logrotate's postrotate signal
        internals.set_request_limit(cfg.proxy.max_request_body_bytes)
        self.addon.refusals.budget.configure(cfg.log.refusal_burst, cfg.log.refusal_rate)
        self.addon.rt = rt
        self.cfg = cfg
        self.reloads += 1
        log.warning("reloaded %s", self.config_path)
        return True

    async def run(self) -> None:
        confdir = prepare_confdir(self.cfg, self.config_path)
        try:
            internals.install(self.cfg.proxy.max_request_body_bytes)
            master = self.master = Master(mopts.Options(), with_termlog=False)
            # The chain holds only what serves requests. Not mitmproxy's DisableH2C: the
            # addon refuses every request that it acts on (see EgressAddon.request).
            master.addons.add(
                core.Core(), proxyserver.Proxyserver(), self.addon, tlsconfig.TlsConfig(),
                _StartupErrorCheck(master),
            )
            # options exist once the addons that declare them are loaded
            master.options.update(**option_values(self.cfg, confdir))
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            loop.add_signal_handler(signal.SIGUSR1, self.audit_reopen)
            loop.add_signal_handler(signal.SIGTERM, master.shutdown)
            loop.add_signal_handler(signal.SIGINT, master.shutdown)
            master.addons.add(_Extras(self, master))
            await master.run()
        finally:
            for s in self.extra_servers:
                s.close()
            shutil.rmtree(confdir, ignore_errors=True)  # the CA key copy goes with it
            self.audit.close()

    def audit_reopen(self) -> None:
        self.audit.reopen()


class _StartupErrorCheck(errorcheck.ErrorCheck):
    """mitmproxy's ErrorCheck (exit if startup logged an error), leaving the addon chain
    once Master.run has made its last startup check and called finish()."""

    name = "errorcheck"  # what Master.run looks up

    def __init__(self, master: Master) -> None:
        super().__init__()
        self.master = master

    def finish(self) -> None:
        super().finish()
        self.master.addons.remove(self)


class _Extras:
    """DNS and health listeners, started once the proxy listeners are up; then it
    leaves the addon chain."""

    def __init__(self, app: ProxyApp, master: Master) -> None:
        self.app = app
        self.master = master

    async def running(self) -> None:
        app = self.app
        if app.cfg.dns:
            app.extra_servers += await dns_server.start(app.cfg.dns.listen, app.addon)
        if app.cfg.proxy.health_listen:
            app.extra_servers.append(await health.start(app.cfg.proxy.health_listen, app.status))
        self.master.addons.remove(self)  # rebinds the chain: this event's loop goes on
