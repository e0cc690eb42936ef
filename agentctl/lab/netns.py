"""Make and remove the lab's namespaces, links, routes and switch rules.

Every command here runs with `ip -n <lab namespace>` or `ip netns exec <lab
namespace>`: nothing is added to the machine's own namespace. Links are created from
inside the switch namespace with their peer placed straight into the node's
namespace, so no lab interface ever exists in the machine's namespace, even briefly.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from agentctl.errors import AgentctlError
from agentctl.lab import topology
from agentctl.lab.topology import SWITCH_LINK_LOCAL, SWITCH_NS, Node
from agentctl.model import Deployment

NETNS_DIR = Path("/run/netns")
VM_BRIDGE, VM_TAP = "br0", "tap0"  # a VM host's node namespace: its link and QEMU's tap, bridged


class LabNetworkError(AgentctlError):
    exit_code = 1


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise LabNetworkError(f"lab network: {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def lab_namespaces_present() -> list[str]:
    """Every namespace with the lab's prefix, including those of a stack or a run we no
    longer know about (a crash)."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(topology.PREFIX))


def netns_exec(ns: str, *cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *cmd, check=check, input=input)


def create(deployment: Deployment, extra_rules: list[str] = (), vm_hosts: bool = False) -> None:
    """Create the switch, every node's namespace and link, and load the switch rules.
    The rules go in before forwarding is switched on, so nothing passes unfiltered.
    vm_hosts: each host's node namespace is only a cable for the VM that holds the
    host's address (_plug_vm)."""
    sh("ip", "netns", "add", SWITCH_NS)
    sh("ip", "-n", SWITCH_NS, "link", "set", "lo", "up")
    netns_exec(SWITCH_NS, "sysctl", "-q", "-w", "net.ipv4.conf.all.proxy_arp=1")
    netns_exec(SWITCH_NS, "sysctl", "-q", "-w", "net.ipv4.conf.default.proxy_arp=1")
    netns_exec(SWITCH_NS, "nft", "-f", "-", input=topology.switch_ruleset(deployment, list(extra_rules)))
    for node in topology.nodes(deployment):
        _add_node(deployment, node, bare=vm_hosts and node.kind == "host")
    netns_exec(SWITCH_NS, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    netns_exec(SWITCH_NS, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")


def _add_node(deployment: Deployment, node: Node, bare: bool = False) -> None:
    sh("ip", "netns", "add", node.netns)
    sh("ip", "-n", node.netns, "link", "set", "lo", "up")
    sh("ip", "-n", SWITCH_NS, "link", "add", node.switch_if, "type", "veth",
       "peer", "name", node.if_name, "netns", node.netns)
    # Switch end: the gateway address (shared by the links of one subnet: each is a
    # point-to-point link) and a host route to the node behind it.
    sh("ip", "-n", SWITCH_NS, "addr", "add", f"{node.gateway}/32", "dev", node.switch_if)
    sh("ip", "-n", SWITCH_NS, "addr", "add", f"{SWITCH_LINK_LOCAL}/64", "dev", node.switch_if, "nodad")
    sh("ip", "-n", SWITCH_NS, "link", "set", node.switch_if, "up")
    sh("ip", "-n", SWITCH_NS, "route", "add", f"{node.ip}/32", "dev", node.switch_if)
    if bare:
        _plug_vm(node)
        return
    # Node end: an address in its subnet, as on a cloud. The switch answers ARP for the
    # whole subnet (proxy_arp), so even two hosts of one subnet talk through the switch
    # and its rules; and a host's own hardening (arp_announce=2, rp_filter=1) sees the
    # gateway on-link, as it expects.
    sh("ip", "-n", node.netns, "addr", "add", f"{node.ip}/{topology.NODE_PREFIX}", "dev", node.if_name)
    sh("ip", "-n", node.netns, "link", "set", node.if_name, "up")
    if node.ip6:
        sh("ip", "-n", node.netns, "addr", "add", f"{node.ip6}/128", "dev", node.if_name, "nodad")
        sh("ip", "-n", SWITCH_NS, "-6", "route", "add", f"{node.ip6}/128", "dev", node.switch_if)
    for route in topology.node_routes(deployment, node):
        sh("ip", "-n", node.netns, "route", "add", *route.split())


def _plug_vm(node: Node) -> None:
    """The node namespace as a VM host's cable: its link to the switch and the VM's tap
    on one bridge; no address, no route and no IPv6 of its own."""
    ns = node.netns
    netns_exec(ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
    netns_exec(ns, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
    sh("ip", "-n", ns, "link", "add", VM_BRIDGE, "type", "bridge")
    sh("ip", "-n", ns, "tuntap", "add", "dev", VM_TAP, "mode", "tap")
    for link in (node.if_name, VM_TAP):
        sh("ip", "-n", ns, "link", "set", link, "master", VM_BRIDGE)
        sh("ip", "-n", ns, "link", "set", link, "up")
    sh("ip", "-n", ns, "link", "set", VM_BRIDGE, "up")


def routes(ns: str) -> list[dict]:
    """Every route of a namespace, IPv4 and IPv6, all tables but `local` (which only
    holds the namespace's own addresses)."""
    out = []
    for family in ("-4", "-6"):
        proc = sh("ip", "-n", ns, "-j", family, "route", "show", "table", "all")
        out += [r for r in json.loads(proc.stdout or "[]") if r.get("table") != "local"]
    return out


def routes_out_of_lab(deployment: Deployment) -> list[str]:
    """Every route in a lab namespace that leads outside the lab (must be empty), and
    every lab link whose peer sits in the machine's own namespace."""
    bad = []
    for ns in lab_namespaces_present():
        for r in routes(ns):
            if not topology.route_is_inside_lab(deployment, r.get("dst", "")):
                bad.append(f"{ns}: route {r.get('dst')} via {r.get('gateway', r.get('dev'))}")
        links = json.loads(sh("ip", "-n", ns, "-d", "-j", "link", "show").stdout or "[]")
        for link in links:
            # A veth whose peer is in another namespace shows `link_netnsid`; the peer of
            # every lab link must be in a lab namespace, which `ip netns` names. A VM
            # host's bridge and tap have no peer: a tap's other end is the VM's QEMU,
            # and what the bridge joins is itself one of these links.
            kind = link.get("linkinfo", {}).get("info_kind")
            if kind in ("bridge", "tun") and ns.startswith(topology.host_netns("")):
                continue
            if link.get("link_type") == "ether" and "link_netnsid" not in link:
                bad.append(f"{ns}: link {link['ifname']} has no peer namespace")
        if not peer_namespaces_are_lab(ns):
            bad.append(f"{ns}: linked to a namespace that is not the lab's")
    return bad


def peer_namespaces_are_lab(ns: str) -> bool:
    """True when every netnsid that `ns` knows names a lab namespace; the machine's own
    namespace would show up here if a lab link led to it."""
    ids = json.loads(sh("ip", "-n", ns, "-j", "netns", "list-id").stdout or "[]")
    return all(str(entry.get("name", "")).startswith(topology.PREFIX) for entry in ids)


def delete_all() -> list[str]:
    """Delete every lab namespace (their links, routes and nftables rules go with them)."""
    gone = []
    for ns in lab_namespaces_present():
        sh("ip", "netns", "del", ns, check=False)
        gone.append(ns)
    return gone


def pids_in(ns: str) -> list[int]:
    if not exists(ns):
        return []
    proc = sh("ip", "netns", "pids", ns, check=False)
    return [int(p) for p in proc.stdout.split()]


def kill_all(ns: str, timeout: float) -> tuple[list[int], list[int]]:
    """SIGKILL every process in the lab namespace `ns`, again for any that turns up,
    until none is left or `timeout` passes: only the lab starts processes there.
    (the processes signalled, those still left)."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while (left := pids_in(ns)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            if pid not in killed:
                killed.append(pid)
        time.sleep(0.1)
    return killed, pids_in(ns)


def nft_counter(name: str = "dropped") -> int:
    proc = netns_exec(SWITCH_NS, "nft", "-j", "list", "counter", "inet", topology.NFT_TABLE, name, check=False)
    if proc.returncode != 0:
        return -1
    for item in json.loads(proc.stdout).get("nftables", []):
        if "counter" in item:
            return int(item["counter"]["packets"])
    return -1


def add_switch_rule(rule: str) -> None:
    """Insert an accept rule at the top of the forward chain (tests open holes this way)."""
    netns_exec(SWITCH_NS, "nft", "insert", "rule", "inet", topology.NFT_TABLE, "forward", *rule.split())
