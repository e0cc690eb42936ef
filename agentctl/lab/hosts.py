"""Lab hosts: systemd-nspawn containers booted on an overlay of the lab image, or
QEMU VMs made from one (vm.py, `lab up --hosts vm`).

Each host's root is an overlayfs (the image read-only below, the host's own upper
layer above), mounted by the lab rather than by nspawn's `--overlay`, so the lab can
write the NoCloud seed and out-of-band files (the proxy's CA key, secret files) into
it before boot, exactly where a cloud's provisioning would have put them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from agentctl.errors import AgentctlError
from agentctl.lab import guestagent, netns, state, topology, vm
from agentctl.render import REBOOT_REQUIRED

SEED_DIR = "var/lib/cloud/seed/nocloud"
RESULT = "/run/cloud-init/result.json"  # written by cloud-init when its last stage ends
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# A container that reboots makes nspawn exit with 133 (systemd-nspawn@.service restarts
# it on that code); with no systemd outside, this loop does the same. SIGTERM is passed
# on, so nspawn shuts the container down cleanly.
SUPERVISE = """
child=
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 0' TERM INT
while :; do
  "$@" &
  child=$!
  wait "$child"; rc=$?
  [ "$rc" -eq 133 ] || exit "$rc"
done
"""


class LabHostError(AgentctlError):
    exit_code = 1


def host_dir(state_dir: Path, name: str) -> Path:
    return state_dir / "hosts" / name


def root_of(state_dir: Path, name: str) -> Path:
    return host_dir(state_dir, name) / "root"


def mount_overlay(image: Path, state_dir: Path, name: str) -> Path:
    """A fresh host root: any upper layer left by an earlier run is thrown away."""
    base = host_dir(state_dir, name)
    if base.exists():
        shutil.rmtree(base)
    for sub in ("upper", "work", "root"):
        (base / sub).mkdir(parents=True, mode=0o755)
    root = base / "root"
    opts = f"lowerdir={image},upperdir={base / 'upper'},workdir={base / 'work'}"
    proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(root)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabHostError(f"lab host {name}: overlay mount failed: {proc.stderr.strip()}")
    return root


def disk_of(state_dir: Path, name: str) -> Path:
    return host_dir(state_dir, name) / "disk.raw"


def to_disk(state_dir: Path, name: str) -> Path:
    """A VM host: its prepared overlay becomes its disk, and the overlay goes (the VM
    writes only to its disk from here on)."""
    base = host_dir(state_dir, name)
    disk = disk_of(state_dir, name)
    vm.make_disk(base / "root", disk)
    subprocess.run(["umount", str(base / "root")], capture_output=True, check=True)
    for sub in ("upper", "work", "root"):
        shutil.rmtree(base / sub, ignore_errors=True)
    return disk


def write_file(root: Path, path: str, content: str | bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(target, mode)
    os.chown(target, *owner)
    return target


def put_file(state_dir: Path, name: str, path: str, content: str, mode: int = 0o644) -> None:
    """A root-owned file into a running host: into its overlay for a container, through
    the guest agent for a VM (whose disk is its own)."""
    ns = topology.host_netns(name)
    if not vm.is_vm(ns):
        write_file(root_of(state_dir, name), path, content, mode)
        return
    script = 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
    proc = run_in(ns, "sh", "-c", script, "put_file", path, f"{mode:o}", input=content, timeout=60)
    if proc.returncode != 0:
        raise LabHostError(f"lab host {name}: writing {path} failed: {proc.stderr.strip()[-200:]}")


def write_seed(root: Path, user_data: str, meta_data: str) -> None:
    write_file(root, f"{SEED_DIR}/user-data", user_data, 0o600)
    write_file(root, f"{SEED_DIR}/meta-data", meta_data, 0o600)


NET_SYSCTL_UNIT = """[Unit]
Description=agentctl lab: this host's own net.* sysctls writable, as on a VM
DefaultDependencies=no
Before=sysinit.target systemd-sysctl.service cloud-init-local.service
ConditionVirtualization=container

[Service]
Type=oneshot
RemainAfterExit=yes
# nspawn 252 mounts /proc/sys read-only even with a network namespace of our own.
# /proc/sys/net is per network namespace, so only this host is affected; kernel.*
# (the machine's) stays read-only.
ExecStart=/bin/sh -c 'mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net'
"""


def allow_net_sysctls(root: Path) -> None:
    unit = "etc/systemd/system/agentctl-lab-netsysctl.service"
    write_file(root, unit, NET_SYSCTL_UNIT)
    enable_unit(root, "sysinit.target", "agentctl-lab-netsysctl.service", "../agentctl-lab-netsysctl.service")


def prepare_vm(root: Path, deployment, node) -> None:
    """What a VM host's own system needs from the lab: its network, set from inside by
    systemd-networkd (a container's is set from outside, netns._add_node)."""
    write_file(root, "etc/systemd/network/10-agentctl-lab.network", vm.network_file(deployment, node))
    for unit, target in (("systemd-networkd.service", "multi-user.target"),
                         ("systemd-networkd.socket", "sockets.target"),
                         ("systemd-networkd-wait-online.service", "network-online.target")):
        enable_unit(root, target, unit, f"/lib/systemd/system/{unit}")


def enable_unit(root: Path, target: str, unit: str, dest: str) -> None:
    """`systemctl enable` done on a root that is not running: the target's wants link."""
    wants = root / "etc/systemd/system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit
    if not link.is_symlink():
        link.symlink_to(dest)


def boot(state_dir: Path, name: str, ns: str) -> int:
    """Start the container in the background; its console goes to console.log."""
    root = root_of(state_dir, name)
    log = open(host_dir(state_dir, name) / "console.log", "ab")
    cmd = ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--quiet",
           "--directory", str(root), "--machine", f"agentctl-{name}", "--hostname", name,
           f"--network-namespace-path={netns.NETNS_DIR / ns}",
           # ufw (iptables-nft), net.* sysctls and fail2ban need these inside; never
           # CAP_SYS_TIME or CAP_SYS_MODULE (the machine's clock and kernel are shared).
           "--capability=CAP_NET_ADMIN,CAP_NET_RAW",
           "--link-journal=no", "--console=read-only", "--resolv-conf=off", "--timezone=off"]
    proc = subprocess.Popen(["sh", "-c", SUPERVISE, "agentctl-lab-host", *cmd], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    state.record_process(state_dir, proc.pid, f"host {name}")
    return proc.pid


def leader(ns: str) -> int | None:
    """The container's init: the process in the host's namespace that is PID 1 in its
    own PID namespace; for a VM host, its QEMU."""
    if vm.agent_socket(ns).exists():
        return vm.qemu_pid(ns)
    for pid in netns.pids_in(ns):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if len(nspid) > 1 and nspid[-1] == "1":
            return pid
    return None


def wait_leader(ns: str, nspawn_pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = leader(ns)
        if pid:
            return pid
        if state.start_time(nspawn_pid) is None:
            raise LabHostError(f"lab host in {ns}: systemd-nspawn exited before the container started")
        time.sleep(0.1)
    raise LabHostError(f"lab host in {ns}: no container init after {timeout:.0f} s")


def enter_cmd(ns: str, *cmd: str, user: str | None = None) -> list[str]:
    """A command line that runs `cmd` inside the host (all its namespaces), as root or
    as `user` with no capabilities left."""
    pid = leader(ns)
    if pid is None:
        raise LabHostError(f"lab host in {ns} is not running (agentctl lab up)")
    if _comm(pid) in ("", "systemd-shutdow"):
        # Entering now would only keep the host from finishing its reboot.
        raise LabHostError(f"lab host in {ns} is shutting down")
    return ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "--", *as_user(list(cmd), user)]


def as_user(cmd: list[str], user: str | None) -> list[str]:
    """`cmd` in a clean environment, as root or as `user` with no capabilities left."""
    base = ["env", "-i", PATH_ENV, "LANG=C.UTF-8"]
    if user:
        base += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--inh-caps=-all",
                 "--bounding-set=-all", "--no-new-privs", "--", "env", f"HOME=/home/{user}", f"USER={user}"]
    return base + list(cmd)


def run_in(ns: str, *cmd: str, user: str | None = None, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` inside the host: nsenter for a container, the guest agent for a VM."""
    if vm.is_vm(ns):
        try:
            return guestagent.run(vm.agent_socket(ns), as_user(list(cmd), user), timeout=timeout, input=input)
        except guestagent.GuestAgentError as exc:
            raise LabHostError(f"lab VM in {ns}: {exc}") from None
    return subprocess.run(enter_cmd(ns, *cmd, user=user), capture_output=True, text=True, timeout=timeout,
                          input=input)


def first_boot_state(ns: str) -> tuple[str | None, bool]:
    """(cloud-init's result.json, None while it runs; whether converge's reboot is pending),
    read without leaving a process in the host: systemd-shutdown waits 90 s for every
    process in a container's namespace, and a poll caught by a reboot was one (measured:
    each Ubuntu first-boot reboot took 95 s instead of 5). A container's files are read
    through its init's /proc root; a VM's with one `cat` of its guest agent."""
    if vm.is_vm(ns):
        proc = run_in(ns, "sh", "-c", f"if [ -e {REBOOT_REQUIRED} ]; then echo pending; else echo none; fi; "
                                      f"cat {RESULT} 2>/dev/null || true", timeout=30)
        flag, _, result = proc.stdout.partition("\n")
        if proc.returncode != 0 or flag not in ("pending", "none"):
            raise LabHostError(f"lab VM in {ns} did not answer")
        return result.strip() or None, flag == "pending"
    pid = leader(ns)
    if pid is None:
        raise LabHostError(f"lab host in {ns} is not running")
    root = proc_root(pid)
    # the flag first: converge sets it before cloud-init writes its result, so a result
    # seen with no flag is never a boot that is about to reboot
    pending = (root / REBOOT_REQUIRED.lstrip("/")).exists()
    try:
        result = (root / RESULT.lstrip("/")).read_text()
    except FileNotFoundError:
        result = None
    if leader(ns) != pid or _comm(pid) in ("", "systemd-shutdow"):
        raise LabHostError(f"lab host in {ns} is shutting down")
    return result, pending


def proc_root(pid: int) -> Path:
    return Path(f"/proc/{pid}/root")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def wait_cloud_init(ns: str, timeout: float = 180) -> tuple[bool, str]:
    """Block until cloud-init has finished and the host is not about to reboot (the
    converge step may ask for one reboot); (done without error, one line on where it is)."""
    deadline = time.monotonic() + timeout
    where = "not started"
    while time.monotonic() < deadline:
        try:
            result, pending = first_boot_state(ns)
            if result is None:
                where = "cloud-init running"
            elif errors := _errors(result):
                return False, f"cloud-init error: {errors[0]}"[:300]
            elif pending:
                where = "cloud-init done, the reboot converge asked for not finished"
            else:
                return True, "done"
        except (subprocess.TimeoutExpired, LabHostError) as exc:
            where = "shutting down" if "shutting down" in str(exc) else "not running (rebooting?)"
        except OSError:
            where = "not running (rebooting?)"  # its /proc went away while we read
        time.sleep(2 if vm.is_vm(ns) else 0.5)
    return False, f"not done after {timeout:.0f} s ({where})"


def _errors(result: str) -> list[str]:
    """cloud-init's errors from result.json (`cloud-init status` reads the same file);
    unreadable counts as one, so a broken result never passes for done."""
    try:
        errors = json.loads(result)["v1"]["errors"]
    except (ValueError, KeyError, TypeError):
        return [f"{RESULT} is not cloud-init's result: {result[:80]!r}"]
    return [str(e) for e in errors] if isinstance(errors, list) else [str(errors)]


def console_tail(state_dir: Path, name: str, lines: int = 15) -> list[str]:
    """The last lines a host printed on its console (what a person reads first when it did not converge)."""
    path = host_dir(state_dir, name) / "console.log"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    # consoles carry colour codes and carriage returns; keep what a terminal would show
    clean = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).replace("\r", "")
    return [line for line in clean.splitlines() if line.strip()][-lines:]


def stop(pid: int, timeout: float = 15) -> None:
    """Ask nspawn to shut the container down cleanly; kill it if it will not."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state.start_time(pid) is None or _is_zombie(pid):
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_host(pid: int, ns: str, timeout: float = 45) -> None:
    """Stop one host and make sure nothing of it is left: a shutdown that outlasts the
    timeout gets its supervisor killed, but the container's own processes (in its
    network namespace) would run on, hold the host's root and answer for a host that
    is meant to be down. Kill those too, and wait until they are gone."""
    stop(pid, timeout)
    _, left = netns.kill_all(ns, 15)
    if left:
        raise LabHostError(f"lab host in {ns} did not stop: processes {left} are left")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
