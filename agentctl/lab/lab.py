"""The lab's library API: up, down, status, and the pieces verify/escape/ssh share.

`up` is converge (Molecule's create + converge): the rendered user-data of the `lab`
stack, exactly as a cloud would run it. `down` is destroy, and leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agentctl.ca import ensure_ca
from agentctl.errors import AgentctlError, ConfigError
from agentctl.lab import aptrepo, hosts, image, internet, netns, packages, state, topology, vm
from agentctl.model import Deployment
from agentctl.secrets import CA_KEY_PATH, secret_file_path
from agentctl.stackfile import load

PROXY_VENV = image.PROXY_VENV
Progress = Callable[[str], None]


class LabError(AgentctlError):
    exit_code = 1


@dataclass
class HostResult:
    name: str
    role: str
    ip: str
    converged: bool
    detail: str
    services: dict[str, str] = field(default_factory=dict)


@dataclass
class UpResult:
    image: Path
    hosts: list[HostResult]
    seconds: float
    already_up: bool = False

    @property
    def ok(self) -> bool:
        return all(h.converged and all(v == "active" for v in h.services.values()) for h in self.hosts)


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, overlay mounts, systemd-nspawn)")


def load_lab(project_dir: Path, stack: str, state_dir: Path | None = None, *,
             distro: str | None = None) -> Deployment:
    """The lab stack's deployment, for the distro its hosts run: `distro`, else the one
    the lab in `state_dir` was brought up with (`lab up --distro`), else the stack's."""
    if distro is None and state_dir is not None:
        distro = state.load(state_dir).distro or None
    d = load(project_dir, stack, distro=distro)
    if d.cloud != "lab":
        raise ConfigError(f"Pulumi.{stack}.yaml", "agentctl:cloud", f"is {d.cloud!r}", "'lab' for `agentctl lab`")
    try:
        topology.internet_servers(d)
    except topology.SharedFakeAddress as exc:
        raise ConfigError(f"Pulumi.{stack}.yaml", "agentctl:proxy.dnsRecords", *exc.args) from None
    return d


def ssh_key(state_dir: Path) -> Path:
    """The lab's own admin key: the stack's real admin keys never reach lab hosts."""
    key = state_dir / "ssh" / "id_ed25519"
    if not key.is_file():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "agentctl-lab-admin", "-f", str(key)],
                       check=True, capture_output=True)
    return key


def lab_deployment(d: Deployment, state_dir: Path) -> Deployment:
    pub = (ssh_key(state_dir).with_suffix(".pub")).read_text().strip()
    return d.model_copy(update={"admin_ssh_keys": [pub]})


def secret_values(d: Deployment, state_dir: Path) -> dict[str, str]:
    """A random value per file-sourced secret (e.g. scout/lab-token), kept across runs,
    so escape can check that the upstream saw exactly this credential."""
    out = {}
    for agent in d.agents:
        for sec in agent.egress.secrets:
            path = state_dir / "secrets" / agent.name / sec.name
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_urlsafe(24))
            out[secret_file_path(agent.name, sec.name)] = path.read_text()
    return out


def is_up(d: Deployment, state_dir: Path) -> bool:
    st = state.load(state_dir)
    live = state.live_processes(st)
    expected = 1 + len(d.agents) + len(topology.internet_servers(d))
    return (st.converged and len(live) == expected and all(netns.exists(ns) for ns in topology.namespaces(d))
            and all(hosts.leader(topology.host_netns(h)) for h in host_names(d)))


def host_names(d: Deployment) -> list[str]:
    return [d.proxy.name] + [a.name for a in d.agents]


HOST_KINDS = ("container", "vm")


def up(project_dir: Path, stack: str, state_dir: Path, cache_dir: Path, progress: Progress = print,
       distro: str | None = None, extra_rules: list[str] = (), boot_timeout: float | None = None,
       host_kind: str = "container") -> UpResult:
    """host_kind: "container" (systemd-nspawn, the default) or "vm" (QEMU, vm.py)."""
    require_root()
    d = load_lab(project_dir, stack, distro=distro)
    use_vm = host_kind == "vm"
    boot_timeout = boot_timeout or (900 if use_vm else 240)
    t0 = time.monotonic()
    st = state.load(state_dir)
    if st.stack == stack and st.hosts == host_kind and st.distro == d.distro and not extra_rules and is_up(d, state_dir):
        return UpResult(Path(st.image), [], time.monotonic() - t0, already_up=True)
    if netns.lab_namespaces_present() or state.lab_mounts(state_dir) or state.live_processes(st):
        progress("cleaning up what an earlier run left")
        down(state_dir, progress=lambda _m: None)

    img = image.ensure_image(project_dir, d.distro, cache_dir, progress, vm=use_vm)
    progress("building agentctl-proxy from this checkout")
    proxy_wheel = _proxy_wheel(project_dir, state_dir)
    progress("building the lab package index's wheels (agentctl-lab-agent"
             + "".join(f", {p.requirement}" for p in packages.lab_index_pins(d)) + ")")
    wheel_dirs = packages.wheel_dirs(cache_dir, d, image.DISTROS[d.distro]["python"])
    progress("building the lab's apt mirror (a security fix and an ordinary update)")
    try:
        apt_repo = aptrepo.build(internet.apt_repo_dir(state_dir), d.distro)
    except aptrepo.AptRepoError as exc:
        raise LabError(f"lab apt mirror: {exc}") from None
    st = state.LabState(stack=stack, project_dir=str(Path(project_dir).resolve()), image=str(img),
                        wheel_dirs=[str(w) for w in wheel_dirs], hosts=host_kind, distro=d.distro)
    state.save(state_dir, st)
    if use_vm:
        kernel = vm.copy_kernel(img, state_dir / "vm-kernel")
        progress("QEMU: probing whether KVM boots this kernel")
        accel, why = vm.accelerator(*kernel)
        progress(f"QEMU: {'KVM' if accel == 'kvm' else 'TCG, software emulation (slow)'}: {why}")

    progress("creating the lab networks (switch, security groups, lab internet)")
    netns.create(d, list(extra_rules), vm_hosts=use_vm)
    # Before anything runs in the lab: no lab namespace may have a way out.
    leaks = netns.routes_out_of_lab(d)
    if leaks:
        down(state_dir, progress=lambda _m: None)
        raise LabError("lab network leaks out of the lab, torn down: " + "; ".join(leaks))
    for ns, pid in internet.start(d, state_dir, wheel_dirs, apt_repo).items():
        state.record_process(state_dir, pid, f"internet {ns}")

    progress("rendering user-data and preparing host overlays")
    ld = lab_deployment(d, state_dir)
    ca = ensure_ca(state_dir, stack)
    from agentctl.render import render_hosts
    rendered = render_hosts(ld, ca.cert_pem, stack=stack, project=_project_name(project_dir))
    node_of = {n.name: n for n in topology.nodes(d)}
    for host in rendered:
        root = hosts.mount_overlay(img, state_dir, host.name)
        hosts.write_seed(root, host.user_data, host.meta_data)
        if use_vm:
            hosts.prepare_vm(root, d, node_of[host.name])
        else:
            hosts.allow_net_sysctls(root)
        hosts.write_file(root, "/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {host.name}\n"
                                             "::1 localhost ip6-localhost ip6-loopback\n")
        if host.role == "proxy":
            _prepare_proxy(d, root, ca.key_path, state_dir, proxy_wheel)
    if use_vm:
        progress(f"making {len(rendered)} VM disks (mke2fs -d)")
        with ThreadPoolExecutor(max_workers=len(rendered)) as pool:
            list(pool.map(lambda h: hosts.to_disk(state_dir, h.name), rendered))

    progress(f"booting {len(rendered)} hosts ({'QEMU ' + accel if use_vm else 'systemd-nspawn'}) "
             "and waiting for cloud-init")
    for host in rendered:
        if use_vm:
            vm.boot(state_dir, host.name, node_of[host.name], hosts.disk_of(state_dir, host.name), kernel, accel)
        else:
            hosts.boot(state_dir, host.name, topology.host_netns(host.name))

    def converge(host) -> HostResult:
        ns = topology.host_netns(host.name)
        ok, where = hosts.wait_cloud_init(ns, boot_timeout)
        unit = "agentctl-proxy.service" if host.role == "proxy" else "agentctl-agent.service"
        services = {unit: _unit_state(ns, unit)} if ok else {}
        return HostResult(host.name, host.role, host.private_ip, ok, where, services)

    with ThreadPoolExecutor(max_workers=len(rendered)) as pool:
        results = list(pool.map(converge, rendered))
    result = UpResult(img, results, time.monotonic() - t0)
    st = state.load(state_dir)
    st.up_at, st.converged = time.time(), result.ok
    state.save(state_dir, st)
    pin_host_keys(state_dir, [h.name for h in rendered])
    return result


def known_hosts(state_dir: Path) -> Path:
    return state_dir / "known_hosts"


def pin_host_keys(state_dir: Path, names: list[str]) -> None:
    """The lab publishes its hosts' keys itself: they are files in each host's root
    (made by cloud-init at first boot). Pinned by host name; every boot makes new ones."""
    from agentctl import sshtrust

    known_hosts(state_dir).unlink(missing_ok=True)
    for name in names:
        ns = topology.host_netns(name)
        if vm.is_vm(ns):  # the keys are on the VM's own disk
            out = hosts.run_in(ns, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub", timeout=15).stdout
            keys = [tuple(line.split()[:2]) for line in sorted(out.splitlines()) if line.strip()]
        else:
            keys = [tuple(pub.read_text().split()[:2]) for pub in sorted(
                (hosts.root_of(state_dir, name) / "etc" / "ssh").glob("ssh_host_*_key.pub"))]
        if keys:
            sshtrust.pin(known_hosts(state_dir), name, keys)


def _unit_state(ns: str, unit: str, settle: float = 20) -> str:
    """The unit's active state once it has had a moment to start (or fail)."""
    deadline = time.monotonic() + settle
    while True:
        out = hosts.run_in(ns, "systemctl", "is-active", unit, timeout=15).stdout.strip()
        if out == "active" or time.monotonic() > deadline:
            return out or "unknown"
        time.sleep(0.5)


def _project_name(project_dir: Path) -> str:
    import yaml
    p = Path(project_dir) / "Pulumi.yaml"
    if p.is_file():
        return str((yaml.safe_load(p.read_text()) or {}).get("name", "agentctl"))
    return "agentctl"


def _proxy_wheel(project_dir: Path, state_dir: Path) -> Path:
    """agentctl-proxy from this checkout, as a wheel (the image's venv has its deps);
    rebuilt only when the proxy's sources change (a build costs ~12 s)."""
    src = (Path(project_dir) / "proxy").resolve()
    digest = hashlib.sha256()
    for f in sorted([src / "pyproject.toml", *(src / "agentctl_proxy").rglob("*.py")]):
        digest.update(f.relative_to(src).as_posix().encode() + b"\0" + f.read_bytes())
    out = state_dir / "wheels" / digest.hexdigest()[:16]
    wheels = sorted(out.glob("agentctl_proxy-*.whl"))
    if wheels:
        return wheels[0]
    shutil.rmtree(state_dir / "wheels", ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                           "--wheel-dir", str(out), str(src)], capture_output=True, text=True)
    wheels = sorted(out.glob("agentctl_proxy-*.whl"))
    if proc.returncode != 0 or not wheels:
        shutil.rmtree(out, ignore_errors=True)
        raise LabError(f"lab: building agentctl-proxy from {src} failed: {proc.stderr.strip()[-400:]}")
    return wheels[0]


def _prepare_proxy(d: Deployment, root: Path, ca_key: Path, state_dir: Path, wheel: Path) -> None:
    """What a cloud delivers out of band: the CA key, the secret files, the lab
    internet's CA as the upstream bundle; and agentctl-proxy itself, from this checkout."""
    hosts.write_file(root, CA_KEY_PATH, ca_key.read_bytes(), 0o600)
    for path, value in secret_values(d, state_dir).items():
        hosts.write_file(root, path, value, 0o600)
    if d.proxy.upstream_ca_bundle:
        hosts.write_file(root, d.proxy.upstream_ca_bundle,
                         internet.ca_cert_path(state_dir).read_bytes(), 0o644)
    staged = root / "tmp" / wheel.name
    shutil.copy(wheel, staged)
    proc = subprocess.run(["chroot", str(root), f"{PROXY_VENV}/bin/pip", "install", "--quiet", "--no-deps",
                           "--no-index", "--force-reinstall", f"/tmp/{wheel.name}"], capture_output=True, text=True)
    staged.unlink()
    if proc.returncode != 0:
        raise LabError(f"lab: installing agentctl-proxy into the proxy host failed: {proc.stderr.strip()[-400:]}")


@dataclass
class DownReport:
    stopped: list[str]
    unmounted: list[str]
    namespaces: list[str]
    leftovers: list[str]


def down(state_dir: Path, progress: Progress = print) -> DownReport:
    """Stop every process the lab started, unmount, delete the namespaces (their links
    and nftables rules go with them). Safe to run any number of times, after a crash too."""
    require_root()
    st = state.load(state_dir)
    live = state.live_processes(st)
    stopped = []
    if live:
        progress(f"stopping {len(live)} lab processes")
        with ThreadPoolExecutor(max_workers=max(1, len(live))) as pool:
            list(pool.map(hosts.stop, live))
        stopped = [f"{what} (pid {pid})" for pid, what in live.items()]
    # Anything still running inside a lab namespace was started there by the lab
    # (a namespace only the lab creates): kill it by id.
    for ns in netns.lab_namespaces_present():
        killed, _ = netns.kill_all(ns, 10)
        stopped += [f"pid {pid} in {ns}" for pid in killed]
    unmounted = state.unmount_all(state_dir)
    gone = netns.delete_all()
    vm.cleanup()
    shutil.rmtree(state_dir / "hosts", ignore_errors=True)
    shutil.rmtree(state_dir / "vm-kernel", ignore_errors=True)
    st.processes, st.up_at, st.converged = {}, None, False
    if state_dir.exists():
        state.save(state_dir, st)
    leftovers = ([f"namespace {n}" for n in netns.lab_namespaces_present()]
                 + [f"mount {m}" for m in state.lab_mounts(state_dir)])
    return DownReport(stopped, unmounted, gone, leftovers)


@dataclass
class Status:
    stack: str
    up: bool
    namespaces: list[str]
    processes: dict[int, str]
    mounts: list[str]
    route_leaks: list[str]
    hosts: dict[str, dict[str, str]]


def status(project_dir: Path, stack: str, state_dir: Path) -> Status:
    require_root()
    d = load_lab(project_dir, stack, state_dir)
    st = state.load(state_dir)
    info: dict[str, dict[str, str]] = {}
    for name in host_names(d):
        ns = topology.host_netns(name)
        row = {"ip": d.proxy_ip if name == d.proxy.name else d.agent_ip(next(a for a in d.agents if a.name == name))}
        if hosts.leader(ns):
            ci = hosts.run_in(ns, "cloud-init", "status", timeout=15).stdout.strip().removeprefix("status: ")
            unit = "agentctl-proxy.service" if name == d.proxy.name else "agentctl-agent.service"
            row.update(state="running", cloud_init=ci, service=f"{unit} {_unit_state(ns, unit, settle=0)}")
        else:
            row.update(state="stopped")
        info[name] = row
    return Status(stack, is_up(d, state_dir), netns.lab_namespaces_present(), state.live_processes(st),
                  state.lab_mounts(state_dir), netns.routes_out_of_lab(d) if netns.exists(topology.SWITCH_NS) else [],
                  info)


def host_ip(d: Deployment, name: str) -> str:
    if name == d.proxy.name:
        return d.proxy_ip
    for agent in d.agents:
        if agent.name == name:
            return d.agent_ip(agent)
    raise ConfigError("HOST", name, "is not a host of this stack", "one of " + ", ".join(host_names(d)))


def ssh_argv(d: Deployment, state_dir: Path, name: str, command: list[str], user: str = "admin") -> list[str]:
    """ssh from the admin namespace, the only place the switch lets SSH come from."""
    return ["ip", "netns", "exec", topology.ADMIN_NS, "ssh", "-i", str(ssh_key(state_dir)),
            "-o", f"UserKnownHostsFile={known_hosts(state_dir)}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"HostKeyAlias={name}", "-o", "StrictHostKeyChecking=yes",  # pinned at `lab up`
            "-o", "ConnectTimeout=5", f"{user}@{host_ip(d, name)}", *command]
