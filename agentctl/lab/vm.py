"""Lab hosts as QEMU virtual machines (`agentctl lab up --hosts vm`).

A VM host is prepared exactly as a container host is (the same overlay of the lab
image, the same NoCloud seed and out-of-band files, see hosts.py), then that tree
becomes the VM's disk (`mke2fs -d`: an ext4 filesystem built from a folder, no loop
device, no mount) and QEMU boots the image's own kernel on it directly (no boot
loader to install). The VM's only network card is a tap device in the host's node
namespace, bridged to the node's link to the switch, so every packet it sends meets
the switch's security-group rules and nothing else: the node namespace itself holds
no address and no route. The lab reaches inside through QEMU's guest agent
(guestagent.py), never through the network under test.
"""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
import time
from pathlib import Path

from agentctl.errors import AgentctlError
from agentctl.lab import netns, state, topology

QEMU = "qemu-system-x86_64"
RUN_DIR = Path("/run/agentctl-lab-vm")  # unix socket paths must stay under 108 bytes
DISK_SIZE = "8G"  # sparse: only what the host writes takes space
MEMORY_MB = 1536


class LabVMError(AgentctlError):
    exit_code = 1


def run_dir(ns: str) -> Path:
    return RUN_DIR / ns


def agent_socket(ns: str) -> Path:
    return run_dir(ns) / "qga.sock"


def qemu_pid(ns: str) -> int | None:
    """The QEMU process in a host's node namespace, if this host is a running VM."""
    for pid in netns.pids_in(ns):
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("qemu-system"):
                return pid
        except OSError:
            continue
    return None


def is_vm(ns: str) -> bool:
    return agent_socket(ns).exists() and qemu_pid(ns) is not None


def mac_address(ip: str) -> str:
    """A stable, locally administered MAC per host (QEMU's 52:54:00 prefix)."""
    b = ipaddress.ip_address(ip).packed
    return "52:54:00:%02x:%02x:%02x" % (b[1], b[2], b[3])


def network_file(deployment, node: topology.Node) -> str:
    """The guest's own systemd-networkd config: what a container host gets from the lab
    (netns._add_node), its address and the lab routes, now set from inside the guest."""
    lines = ["# agentctl lab VM: the address and routes of this host's link to the switch",
             "[Match]", f"MACAddress={mac_address(node.ip)}", "",
             "[Network]", f"Address={node.ip}/{topology.NODE_PREFIX}",
             "IPv6AcceptRA=no", "LinkLocalAddressing=ipv6", ""]
    for route in topology.node_routes(deployment, node):
        dst, _via, gw = route.split()[:3]
        lines += ["[Route]", f"Destination={dst}", f"Gateway={gw}", ""]
    return "\n".join(lines)


def make_disk(root: Path, disk: Path) -> None:
    """The host's prepared tree as an ext4 disk image (owners, modes, xattrs such as
    file capabilities, and hard links are kept by mke2fs -d)."""
    disk.unlink(missing_ok=True)
    proc = subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "agentctl-root", "-d", str(root), str(disk),
                           DISK_SIZE], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabVMError(f"lab VM disk {disk}: mke2fs failed: {proc.stderr.strip()[-300:]}")


def kernel_of(image: Path) -> tuple[Path, Path]:
    """The image's newest kernel and its initramfs (the distribution's own)."""
    kernels = sorted((image / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise LabVMError(f"lab VM image {image} has no kernel in /boot (built without --hosts vm?)")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = image / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise LabVMError(f"lab VM image {image}: {initrd.name} is missing")
    return kernels[-1], initrd


def copy_kernel(image: Path, dest: Path) -> tuple[Path, Path]:
    """A copy QEMU reads at every (re)boot: the image's files may be pruned meanwhile."""
    dest.mkdir(parents=True, exist_ok=True)
    kernel, initrd = kernel_of(image)
    out = dest / "vmlinuz", dest / "initrd.img"
    shutil.copyfile(kernel, out[0])
    shutil.copyfile(initrd, out[1])
    return out


KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=10"


def accelerator(kernel: Path, initrd: Path, timeout: float = 40) -> tuple[str, str]:
    """KVM when it boots this kernel, else TCG (software emulation); (accel, why).
    Some machines' /dev/kvm is itself paravirtualised and cannot run a stock kernel, so
    the probe boots the real kernel as far as its initramfs and asks for a clean exit."""
    if not Path("/dev/kvm").exists():
        return "tcg", "/dev/kvm is absent"
    cmd = [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "512", "-nographic", "-no-reboot", "-nodefaults",
           "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", "console=ttyS0 panic=-1 rdinit=/agentctl-probe-no-such-init"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return "tcg", f"KVM did not boot the kernel within {timeout:.0f} s ({_last(out)})"
    out = proc.stdout + proc.stderr
    if "Kernel panic" in out and "Linux version" in out:
        return "kvm", "KVM boots the kernel"
    return "tcg", f"KVM cannot boot the kernel here ({_last(out)})"


def _last(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix(f"{QEMU}: ")[:160] if lines else "no console output"


def boot(state_dir: Path, name: str, node: topology.Node, disk: Path, kernel: tuple[Path, Path],
         accel: str) -> int:
    """Start the VM in the host's node namespace; its serial console goes to console.log."""
    rdir = run_dir(node.netns)
    rdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    agent_socket(node.netns).unlink(missing_ok=True)
    log = open(disk.parent / "console.log", "ab")
    cpu = "host" if accel == "kvm" else "max"  # TCG's `max`: every feature it emulates (NX among them)
    cmd = ["ip", "netns", "exec", node.netns, QEMU, "-name", f"agentctl-{name}", "-machine", "q35",
           "-accel", accel, "-cpu", cpu, "-smp", "1", "-m", str(MEMORY_MB),
           "-nographic", "-nodefaults", "-serial", "stdio", "-monitor", "none",
           "-kernel", str(kernel[0]), "-initrd", str(kernel[1]), "-append", KERNEL_CMDLINE,
           "-drive", f"file={disk},if=virtio,format=raw,cache=unsafe",
           "-netdev", f"tap,id=net0,ifname={netns.VM_TAP},script=no,downscript=no",
           "-device", f"virtio-net-pci,netdev=net0,mac={mac_address(node.ip)}",
           # A hardware watchdog the guest's systemd can arm, as clouds offer. q35's own
           # (iTCO) resets too, so whichever the guest numbers watchdog0 works.
           "-device", "i6300esb", "-action", "watchdog=reset", "-global", "ICH9-LPC.noreboot=false",
           "-device", "virtio-rng-pci",
           "-chardev", f"socket,id=qga0,path={agent_socket(node.netns)},server=on,wait=off",
           "-device", "virtio-serial", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    state.record_process(state_dir, proc.pid, f"vm {name}")
    deadline = time.monotonic() + 10
    while not agent_socket(node.netns).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabVMError(f"lab VM {name}: QEMU exited at start (exit {proc.poll()}); "
                             f"see {disk.parent / 'console.log'}")
        time.sleep(0.05)
    return proc.pid


def cleanup() -> None:
    shutil.rmtree(RUN_DIR, ignore_errors=True)
