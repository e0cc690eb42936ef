"""The pieces of the VM lab that need no VM: the guest's network config, the disk made
from a prepared tree (read back with e2fsprogs' own debugfs), the VM image's package
list and cache key. (The accelerator probe needs the image's kernel: the VM e2e test
checks it says what it chose.)"""
from __future__ import annotations

import datetime
import os
import re
import subprocess
from pathlib import Path

import pytest

from agentctl.lab import image, topology, vm
from agentctl.stackfile import load

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lab_stack():
    return load(ROOT, "lab")


def test_guest_network_is_the_node_address_and_lab_routes_only(lab_stack):
    node = next(n for n in topology.nodes(lab_stack) if n.name == "scout")
    text = vm.network_file(lab_stack, node)
    assert f"MACAddress={vm.mac_address(node.ip)}" in text
    assert f"Address={node.ip}/{topology.NODE_PREFIX}" in text and "IPv6AcceptRA=no" in text
    routes = re.findall(r"Destination=(\S+)\nGateway=(\S+)", text)
    assert routes == [(r.split()[0], r.split()[2]) for r in topology.node_routes(lab_stack, node)]
    # nothing that could lead out: every destination is a lab prefix, no default route
    assert routes and all(topology.route_is_inside_lab(lab_stack, dst) for dst, _ in routes)
    assert "DHCP" not in text and "0.0.0.0/0" not in text


def test_mac_addresses_are_stable_and_distinct(lab_stack):
    ips = [n.ip for n in topology.nodes(lab_stack)]
    macs = [vm.mac_address(ip) for ip in ips]
    assert len(set(macs)) == len(macs) and all(m.startswith("52:54:00:") for m in macs)
    assert vm.mac_address(ips[0]) == vm.mac_address(ips[0])


def test_the_vm_image_is_its_own_image_with_a_kernel_and_the_guest_agent():
    week = datetime.date(2026, 12, 7)
    plain, with_vm = image.package_list(ROOT), image.package_list(ROOT, "debian-12", vm=True)
    assert set(with_vm) - set(plain) == {"linux-image-amd64", "qemu-guest-agent", "initramfs-tools"}
    assert "linux-image-virtual" in image.package_list(ROOT, "ubuntu-24.04", vm=True)
    key = image.cache_key("debian-12-vm", with_vm, [], week)
    assert key.startswith("debian-12-vm-2026w50-") and key != image.cache_key("debian-12", plain, [], week)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown and file capabilities need root")
def test_the_disk_keeps_owners_modes_capabilities_and_links(tmp_path):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    ping = root / "usr/bin/ping"
    ping.write_bytes(b"\x7fELF")
    ping.chmod(0o755)
    subprocess.run(["setcap", "cap_net_raw+ep", str(ping)], check=True)
    secret = root / "etc/agentctl/secret"
    secret.parent.mkdir(parents=True)
    secret.write_text("s")
    secret.chmod(0o600)
    os.chown(secret, 1002, 1002)
    os.link(ping, root / "usr/bin/ping-again")
    (root / "usr/bin/p").symlink_to("ping")
    disk = tmp_path / "disk.raw"
    vm.make_disk(root, disk)

    def debugfs(request: str) -> str:
        return subprocess.run(["debugfs", "-R", request, str(disk)], capture_output=True, text=True).stdout

    stat = debugfs("stat /etc/agentctl/secret")
    assert re.search(r"User:\s+1002\s+Group:\s+1002", stat) and "Mode:  0600" in stat, stat
    assert "security.capability" in debugfs("ea_list /usr/bin/ping")
    assert re.search(r"Links: 2", debugfs("stat /usr/bin/ping"))
    assert "Fast link dest: \"ping\"" in debugfs("stat /usr/bin/p")


def _agentctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import sys
    return subprocess.run([sys.executable, "-m", "agentctl.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_an_unknown_host_kind_is_refused_in_one_line():
    proc = _agentctl("lab", "up", "--hosts", "kvm")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "agentctl lab: --hosts 'kvm' is not known; expected container or vm"], proc.stderr


def test_snapshot_upgrade_refuses_a_vm_lab_in_one_line(tmp_path):
    """The lab's snapshots are copies of a container's overlay layer; a VM's disk is not one."""
    (tmp_path / "state.json").write_text('{"stack": "lab", "converged": true, "hosts": "vm", "image": "/x"}')
    proc = _agentctl("snapshot-upgrade", "--stack", "lab", "--host", "scout", "--to", "1.1.0", "--yes",
                     env={"AGENTCTL_LAB_STATE": str(tmp_path)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line, = proc.stderr.strip().splitlines()
    assert "is up on vm hosts" in line and "container hosts for snapshot-upgrade" in line, line


def test_a_bridge_or_tap_passes_the_no_route_check_only_in_a_host_namespace(monkeypatch, lab_stack):
    """A VM host's node namespace holds a bridge and a tap, which have no peer namespace;
    anywhere else (the admin namespace, an internet node) such a link is a way out."""
    import json as _json

    from agentctl.lab import netns
    links = [{"ifname": "eth0", "link_type": "ether", "link_netnsid": 0, "linkinfo": {"info_kind": "veth"}},
             {"ifname": "br0", "link_type": "ether", "linkinfo": {"info_kind": "bridge"}},
             {"ifname": "tap0", "link_type": "ether", "linkinfo": {"info_kind": "tun"}}]

    def fake_sh(*args, **_kw):
        out = _json.dumps(links) if "link" in args else "[]"
        return subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(netns, "sh", fake_sh)
    monkeypatch.setattr(netns, "peer_namespaces_are_lab", lambda ns: True)
    monkeypatch.setattr(netns, "lab_namespaces_present", lambda: [topology.host_netns("scout")])
    assert netns.routes_out_of_lab(lab_stack) == []
    monkeypatch.setattr(netns, "lab_namespaces_present", lambda: [topology.ADMIN_NS])
    assert netns.routes_out_of_lab(lab_stack) == [f"{topology.ADMIN_NS}: link br0 has no peer namespace",
                                                  f"{topology.ADMIN_NS}: link tap0 has no peer namespace"]
