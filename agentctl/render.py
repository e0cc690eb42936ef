"""Render cloud-init user-data for every host of a deployment, and the proxy config.

Each file a host receives is a jinja2 template (StrictUndefined: a missing value is
an error, never an empty string); the cloud-config document around them is built
as data and dumped as YAML, so no template can break its syntax.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from agentctl import escape, firewall, hardening, hermes
from agentctl.ca import pending_ca
from agentctl.errors import ConfigError
from agentctl.model import Agent, Deployment
from agentctl.outdir import check_out, stage
from agentctl.proxyconfig import proxy_config
from agentctl.resources import ROLES, TEMPLATES
from agentctl.secrets import (CA_KEY_PATH, INSTALL_SECRET_BIN, PROXY_CONFIG_PATH, SECRET_OWNERS, SECRETS_DIR,
                              TAILSCALE_AUTHKEY_PATH, proxy_config_parameter_name)
from agentctl.stackfile import load, project_name, stack_path
from agentctl.userdata import check_user_data_limits

PROXY_BIN = "/opt/agentctl-proxy/venv/bin/agentctl-proxy"
AGENT_SERVICE = "agentctl-agent.service"
# The agent unit's AppArmor profile (roles/agent/templates/apparmor-agent.j2).
AGENT_APPARMOR_PROFILE = "agentctl-agent"
PROXY_SERVICE = "agentctl-proxy.service"
# Hermes' home, config and code: where and why in agentctl/hermes.py.
HERMES_HOME = hermes.HOME
HERMES_CONFIG = hermes.USER_CONFIG
# A package runtime (model.PackagePin): its venvs, the link to the running one, and the
# one script that installs a version (first boot and snapshot-upgrade alike).
RUNTIME_BASE = "/opt/agentctl-runtime"
HERMES_INSTALL = RUNTIME_BASE  # Hermes is a package runtime; hermes.VENV is its venv link
RUNTIME_INSTALL = "/usr/local/sbin/agentctl-runtime-install"
BACKUP_DIR = "/var/backups/agentctl"
# Snapshots of the agent's working folder (roles/agent/templates/snapshot.sh.j2).
SNAPSHOT_REPO = "/var/lib/agentctl/snapshots.git"
SNAPSHOT_WORKTREE = "/home/agentuser"
SNAPSHOT_INTERVAL = "5min"
BACKUP_MARKER = "/var/lib/agentctl/last-backup"


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # libyaml: 10x faster
    """Readable user-data: file contents as literal blocks, no YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000, default_flow_style=False)


@dataclass(frozen=True)
class RenderedHost:
    name: str
    role: str  # "proxy" | "agent"
    private_ip: str
    user_data: str
    meta_data: str
    proxy_config: str | None = None


@lru_cache(maxsize=None)
def _env(role: str) -> jinja2.Environment:
    loader = jinja2.FileSystemLoader([str(TEMPLATES), str(ROLES / role / "templates")])
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    env.filters.update(escape.FILTERS)
    return env


@lru_cache(maxsize=None)
def _manifest(path: Path) -> tuple[dict[str, str], ...]:
    return tuple(yaml.safe_load(path.read_text()))


def read_package_file(path: Path) -> list[str]:
    """One package per line; `#` starts a comment."""
    return [name for line in path.read_text().splitlines() if (name := line.split("#", 1)[0].strip())]


def _packages(role: str) -> list[str]:
    """The packages a role installs (the base's first); the lab image bakes them all."""
    names = read_package_file(ROLES / "base" / "packages.txt") + read_package_file(ROLES / role / "packages.txt")
    return list(dict.fromkeys(names))


def watched_service(role: str) -> str:
    return AGENT_SERVICE if role == "agent" else PROXY_SERVICE


def _common(d: Deployment, *, name: str, role: str, private_ip: str, stack: str, project: str,
            ca_cert_pem: str) -> dict[str, Any]:
    proxy_url = f"http://{d.proxy_ip}:{d.proxy.listen.tunnel}"
    return {
        "role": role, "host": name, "stack": stack,
        "converge_result": converge_result_marker(role, name), "converge_ok": CONVERGE_OK,
        "converge_failed": CONVERGE_FAILED, "reboot_required": REBOOT_REQUIRED,
        "project": project, "cloud": d.cloud, "distro": d.distro,
        "private_ip": private_ip, "proxy_ip": d.proxy_ip, "proxy_url": proxy_url,
        "proxy_port": d.proxy.listen.tunnel, "agent_subnet": str(d.agent_subnet), "ca_cert_pem": ca_cert_pem,
        "ssh_users": hardening.SSH_USERS,
        "ssh": {"kex": hardening.SSH_KEX, "ciphers": hardening.SSH_CIPHERS, "macs": hardening.SSH_MACS,
                "host_key_algorithms": hardening.SSH_HOST_KEY_ALGORITHMS},
        # The proxy is the jump host to the agents; agents forward nothing.
        "ssh_tcp_forwarding": "local" if role == "proxy" else "no",
        "guarded_commands": hardening.GUARDED_COMMANDS,
        "fail2ban": {"maxretry": hardening.FAIL2BAN_MAXRETRY, "findtime": hardening.FAIL2BAN_FINDTIME,
                     "bantime": hardening.FAIL2BAN_BANTIME, "ignoreip": firewall.fail2ban_ignored(d, role)},
        "login_defs": hardening.LOGIN_DEFS,
        "cron_paths": hardening.CRON_PATHS,
        "auditd_conf": hardening.AUDITD_CONF, "api_mounts": hardening.API_MOUNTS,
        "hardware_watchdog_sec": hardening.HARDWARE_WATCHDOG_SEC, "reboot_watchdog_sec": hardening.REBOOT_WATCHDOG_SEC,
        "blacklisted_modules": hardening.BLACKLISTED_MODULES_BY_DISTRO[d.distro],
        "upgrade_origins": hardening.UPGRADE_ORIGINS[d.distro],
        "maintenance": d.maintenance, "watchdog": d.watchdog,
        "watched_service": watched_service(role),
        "tailscale_enabled": role == "proxy" and d.tailscale is not None,
        "tailscale_authkey_path": TAILSCALE_AUTHKEY_PATH,
        # Secrets are pushed onto the proxy only (Hetzner): the command that writes them.
        "install_secret_bin": INSTALL_SECRET_BIN if role == "proxy" else None,
        "secrets_dir": SECRETS_DIR, "ca_key_path": CA_KEY_PATH, "secret_owners": SECRET_OWNERS,
        "proxy_config_path": PROXY_CONFIG_PATH,
        "heartbeat_url": d.heartbeat_url,
        "backups_enabled": False, "backup_marker": BACKUP_MARKER,
        "heartbeat_curl_proxy": f"--proxy {proxy_url}" if role == "agent" else "",
        "ufw_rules": firewall.agent_rules(d) if role == "agent" else firewall.proxy_rules(d),
    }


def _proxy_env(d: Deployment) -> dict[str, str]:
    url = f"http://{d.proxy_ip}:{d.proxy.listen.tunnel}"
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    return {"HTTPS_PROXY": url, "HTTP_PROXY": url, "https_proxy": url, "http_proxy": url,
            "NO_PROXY": "localhost,127.0.0.1,::1", "no_proxy": "localhost,127.0.0.1,::1",
            "SSL_CERT_FILE": bundle, "REQUESTS_CA_BUNDLE": bundle,
            "NODE_EXTRA_CA_CERTS": "/usr/local/share/ca-certificates/agentctl-proxy-ca.crt"}


def _agent_exec(agent: Agent) -> str:
    if agent.runtime.hermes:
        # as Hermes' own unit runs it (hermes_cli/gateway.py generate_systemd_unit)
        return f"{hermes.VENV}/bin/hermes gateway run"
    assert agent.runtime.command is not None
    return agent.runtime.command.exec


def _agent_context(d: Deployment, agent: Agent) -> dict[str, Any]:
    env = _proxy_env(d)
    agent_env = {**env, "HERMES_HOME": HERMES_HOME}
    if agent.runtime.command:
        agent_env.update(agent.runtime.command.environment)
    h = agent.runtime.hermes
    if h:
        agent_env.update(hermes.unit_environment())
    return {"agent": agent, "proxy_env": env, "agent_exec": escape.systemd_specifiers(_agent_exec(agent)),
            "agent_environment": [escape.systemd_env(k, v) for k, v in agent_env.items()],
            "shell_proxy_env": " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()),
            "pip_proxy_env": " ".join(f"{k}={shlex.quote(env[k])}" for k in ("https_proxy", "no_proxy")),
            "pin": agent.runtime.package_pin, "runtime_package": agent.runtime.package_pin is not None,
            "runtime_base": RUNTIME_BASE, "runtime_install": RUNTIME_INSTALL,
            "hermes_home": HERMES_HOME, "hermes_config": HERMES_CONFIG, "hermes_install": HERMES_INSTALL,
            "hermes": h is not None,
            "snapshot_repo": SNAPSHOT_REPO, "snapshot_worktree": SNAPSHOT_WORKTREE,
            "snapshot_interval": SNAPSHOT_INTERVAL,
            "hermes_config_yaml": dump_yaml(hermes.config(h)) if h else "",
            "hermes_managed_env": hermes.env_text(hermes.managed_env(h)) if h else "",
            "hermes_managed_dir": hermes.MANAGED_DIR,
            "hermes_root_files": hermes.ROOT_FILES, "hermes_root_dirs": hermes.ROOT_DIRS,
            "hermes_readonly_paths": " ".join(hermes.root_paths()),
            "hermes_root_paths": hermes.root_paths(), "apparmor_profile": AGENT_APPARMOR_PROFILE,
            "backups_enabled": agent.backups.enabled, "backups": agent.backups, "backup_dir": BACKUP_DIR}


def _users(d: Deployment, role: str) -> list[Any]:
    keys = list(d.admin_ssh_keys)
    users: list[Any] = [
        {"name": "admin", "gecos": "break-glass administrator", "shell": "/bin/bash", "lock_passwd": True,
         "groups": ["adm", "systemd-journal"], "ssh_authorized_keys": keys},
        # Debian has a system group named `operator`: join no group of that name.
        {"name": "operator", "gecos": "day-to-day operator (sudo with a guard list)", "shell": "/bin/bash",
         "lock_passwd": True, "no_user_group": True, "groups": ["adm", "systemd-journal"],
         "ssh_authorized_keys": keys},
        {"name": "agentuser", "gecos": "runs the agent; no sudo, no SSH", "shell": "/bin/bash",
         "lock_passwd": True},
    ]
    if role == "proxy":
        users.append({"name": "agentctl-proxy", "gecos": "egress proxy", "system": True,
                      "shell": "/usr/sbin/nologin", "lock_passwd": True, "homedir": "/var/lib/agentctl-proxy",
                      "no_create_home": True})
    return users


_COMMENT = re.compile(r"[ \t]*#(?!!)")
_KEPT_COMMENT = re.compile(r"Managed by agentctl|# (BEGIN|END) ")  # the header; section markers


def compact(text: str) -> str:
    """A shell script or unit without its comment and blank lines (the "Managed by"
    line and BEGIN/END section markers stay): EC2 takes 16 KiB of user-data. Only for files marked `compact` in a
    files.yaml; tests/test_render_hermes.py proves with bash's own parser that a
    compacted script is the same program (no comment-looking line inside a string)."""
    keep = [line for line in text.splitlines()
            if line.strip() and (not _COMMENT.match(line) or _KEPT_COMMENT.search(line))]
    return "\n".join(keep) + "\n"


def _write_files(role: str, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    env = _env(role)
    entries = []
    for item in (*_manifest(TEMPLATES / "files.yaml"), *_manifest(ROLES / role / "files.yaml")):
        if "when" in item and not ctx[item["when"]]:
            continue
        content = env.get_template(item["template"]).render(ctx)
        if item.get("compact"):
            content = compact(content)
        entries.append({"path": item["path"], "permissions": item["mode"], "owner": "root:root",
                        "content": content})
    return entries


def _cloud_config(d: Deployment, role: str, name: str, ctx: dict[str, Any]) -> str:
    doc: dict[str, Any] = {
        "hostname": name,
        "preserve_hostname": False,
        "timezone": "Etc/UTC",
        "disable_root": True,
        "ssh_pwauth": False,
        "ssh_deletekeys": True,
        "ssh_genkeytypes": ["ed25519", "rsa"],
        "users": _users(d, role),
        "write_files": _write_files(role, ctx),
    }
    if d.cloud != "lab":
        # The lab bakes packages into its image: `packages:` always runs apt-get update.
        doc.update(package_update=True, package_upgrade=True, packages=_packages(role))
    if role == "agent" and d.cloud != "lab":
        # apt goes through the proxy, which may still be starting: wait for it (10 min).
        ip, port = d.proxy_ip, d.proxy.listen.tunnel
        result = converge_result_marker(role, name)
        doc["bootcmd"] = [
            # Every boot repeats a recorded success, so a console read after converge's one
            # reboot (Ubuntu 24.04) still shows it.
            ["bash", "-c", f"if [ -e /var/lib/agentctl/converged ]; then echo '{result}{CONVERGE_OK}' "
                           "| tee /dev/console; fi; exit 0"],
            ["bash", "-c", f"for i in $(seq 120); do (exec 3<>/dev/tcp/{ip}/{port}) 2>/dev/null "
                           f"&& exit 0; sleep 5; done; echo 'agentctl: proxy {ip}:{port} unreachable for 10 minutes' "
                           "| tee /dev/console; exit 0"]]
    if role == "proxy" and ctx["proxy_own_resolvers"]:
        # The VPC resolver answers NXDOMAIN to everyone (DNS Firewall): switch to our own
        # before cloud-init's packages step and the pip install need names (bootcmd runs
        # in the init stage; packages and runcmd run in the final stage).
        doc["bootcmd"] = [["bash", "-c", _env(role).get_template("proxy-resolvers.sh.j2").render(ctx)]]
    doc["runcmd"] = [["/usr/local/sbin/agentctl-converge"]]
    doc["power_state"] = {"mode": "reboot", "delay": "now", "condition": f"test -e {REBOOT_REQUIRED}",
                          "message": "agentctl: reboot once so sshd starts with the hardened config"}
    doc["final_message"] = converged_marker(role, name) + "$UPTIME s"
    header = f"#cloud-config\n# agentctl {role} host '{name}' of stack '{ctx['stack']}'. Rendered: do not edit.\n"
    return header + dump_yaml(doc)


def render_hosts(d: Deployment, ca_cert_pem: str, *, stack: str, project: str = "agentctl") -> list[RenderedHost]:
    hosts = [_render_proxy(d, ca_cert_pem, stack=stack, project=project)]
    for agent in d.agents:
        ip = d.agent_ip(agent)
        ctx = _common(d, name=agent.name, role="agent", private_ip=ip, stack=stack, project=project,
                      ca_cert_pem=ca_cert_pem)
        ctx.update(_agent_context(d, agent))
        ctx["host_facts"] = _facts(d, "agent", agent.name, ip, stack)
        hosts.append(RenderedHost(agent.name, "agent", ip, _cloud_config(d, "agent", agent.name, ctx),
                                  _meta_data(agent.name, stack)))
    return hosts


def _render_proxy(d: Deployment, ca_cert_pem: str, *, stack: str, project: str) -> RenderedHost:
    pconf = dump_yaml(proxy_config(d, project=project, stack=stack))
    ctx = _common(d, name=d.proxy.name, role="proxy", private_ip=d.proxy_ip, stack=stack, project=project,
                  ca_cert_pem=ca_cert_pem)
    ctx.update(proxy_config=pconf, proxy_bin=PROXY_BIN,
               proxy_own_resolvers=d.proxy.resolvers if d.cloud == "aws" else [],
               # The policy is not in a cloud proxy's user-data, so a rule change does not
               # change (and replace) the proxy: AWS pulls it from an SSM parameter
               # (stacks/aws_deployment.py), Hetzner gets it pushed with the secrets
               # (stacks/hcloud_deployment.py). docs/cloud.md, "Lifecycle".
               policy_pull=d.cloud == "aws", proxy_config_in_user_data=d.cloud == "lab",
               proxy_config_parameter=proxy_config_parameter_name(project, stack), region=d.region,
               proxy_install_spec=None if d.cloud == "lab" else d.proxy.install.pip,
               host_facts=_facts(d, "proxy", d.proxy.name, d.proxy_ip, stack))
    return RenderedHost(d.proxy.name, "proxy", d.proxy_ip, _cloud_config(d, "proxy", d.proxy.name, ctx),
                        _meta_data(d.proxy.name, stack), pconf)


CONVERGE_OK, CONVERGE_FAILED = "succeeded", "failed"


# converge touches it when this boot must end in one reboot (templates/converge.sh.j2);
# cloud-init's power_state reboots on it, and whatever waits for a host reads it.
REBOOT_REQUIRED = "/run/agentctl/reboot-required"


def converge_result_marker(role: str, name: str) -> str:
    """The start of the line converge prints on the console when it ends: this prefix +
    "succeeded" only after every step succeeded, or + "failed (exit N, line L: CMD)".
    cloud-init's final message prints either way; agentctl_stacks.agent_imds needs this."""
    return f"agentctl: {role} host {name} converge "


def converged_marker(role: str, name: str) -> str:
    """The start of cloud-init's final message on this host's console: what
    agentctl_stacks.agent_imds waits for before it closes an agent's IMDS."""
    return f"agentctl: {role} host {name} converged after "


def _facts(d: Deployment, role: str, name: str, ip: str, stack: str) -> dict[str, Any]:
    return {"name": name, "role": role, "stack": stack, "cloud": d.cloud, "distro": d.distro,
            "private_ip": ip, "proxy_ip": d.proxy_ip,
            "watched_service": watched_service(role)}


def _meta_data(name: str, stack: str) -> str:
    return json.dumps({"instance-id": f"agentctl-{stack}-{name}", "local-hostname": name}) + "\n"


def render_stack(project_dir: Path, stack: str, out: Path) -> list[RenderedHost]:
    """Validate everything (config, --out, sizes) before writing anything."""
    deployment = load(project_dir, stack)
    check_out(Path(out), Path(project_dir))
    ca = pending_ca(project_dir, stack)
    project = project_name(project_dir)
    hosts = render_hosts(deployment, ca.cert_pem, stack=stack, project=project)

    def proxy_with(n: int) -> str:  # the proxy's user-data with the first n agents only
        d = deployment.model_copy(update={"agents": deployment.agents[:n]})
        return _render_proxy(d, ca.cert_pem, stack=stack, project=project).user_data
    check_user_data_limits(deployment, hosts, str(stack_path(project_dir, stack)), proxy_with)
    # Everything is written beside --out first; only then the CA key, then the swap:
    # a render that cannot write its output leaves no CA key behind either.
    staged = stage({f"{h.name}/{name}": text for h in hosts for name, text in _files(h)}, Path(out))
    try:
        ca.save()
    except BaseException as exc:
        staged.discard()
        if isinstance(exc, OSError):
            raise ConfigError("--project-dir", str(project_dir), f"cannot hold the stack's CA key "
                              f"({exc.strerror or exc})", "a project folder that can be written") from None
        raise
    staged.commit()
    return hosts


def _files(h: RenderedHost) -> list[tuple[str, str]]:
    files = [("user-data", h.user_data), ("meta-data", h.meta_data)]
    return files + ([("proxy.yaml", h.proxy_config)] if h.proxy_config is not None else [])
