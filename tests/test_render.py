"""What the rendered user-data means, read back the way the host will read it: YAML
parsed, sudoers through visudo, sshd settings through the real `sshd -T`, unit files
through an ini parser. Expected values come from the same model that rendered them."""
from __future__ import annotations

import base64
import configparser
import gzip
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agentctl import firewall, hardening
from agentctl.render import HERMES_CONFIG, HERMES_HOME
from agentctl.stackfile import load
from agentctl.userdata import EC2_USER_DATA_LIMIT, HCLOUD_USER_DATA_LIMIT, ec2_user_data_base64, hcloud_user_data

from .conftest import ROOT

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/00-agentctl.conf"
ALL_HOSTS = [("lab", "proxy"), ("lab", "scout"), ("example-aws", "proxy"), ("example-aws", "scout"),
             ("example-hcloud", "proxy"), ("example-hcloud", "scout"), ("example-hcloud", "scribe")]
AGENTS = [h for h in ALL_HOSTS if h[1] != "proxy"]


def _unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False,
                                       dict_type=_MultiDict)
    parser.optionxform = str  # type: ignore[assignment]
    parser.read_string(text)
    return parser


class _MultiDict(dict):
    """systemd allows a key many times; keep every value, joined by newlines."""

    def __setitem__(self, key, value):
        if isinstance(value, list) and key in self:
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def _values(unit: configparser.ConfigParser, section: str, key: str) -> list[str]:
    return unit.get(section, key, raw=True).split("\n")


_C_UNESCAPE = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b",
               "f": "\f", "v": "\v", "s": " "}


def systemd_words(value: str) -> list[str]:
    """A unit-file value split as systemd splits Environment= (specifiers first, then
    extract_first_word with EXTRACT_UNQUOTE | EXTRACT_CUNESCAPE), from systemd.syntax(7)."""
    value = re.sub(r"%(.)", lambda m: "%" if m.group(1) == "%" else pytest.fail(f"specifier %{m.group(1)}"), value)
    words, i, n = [], 0, len(value)
    while i < n:
        while i < n and value[i] in " \t":
            i += 1
        if i >= n:
            break
        word, quote = [], None
        while i < n and (quote or value[i] not in " \t"):
            ch = value[i]
            if ch == "\\" and i + 1 < n:
                nxt = value[i + 1]
                if nxt == "x":
                    word.append(chr(int(value[i + 2:i + 4], 16)))
                    i += 4
                    continue
                word.append(_C_UNESCAPE.get(nxt, nxt))
                i += 2
                continue
            if quote and ch == quote:
                quote = None
            elif not quote and ch in "\"'":
                quote = ch
            else:
                word.append(ch)
            i += 1
        assert quote is None, f"unterminated quote in {value!r}"
        words.append("".join(word))
    return words


def unit_environment(unit: configparser.ConfigParser) -> dict[str, str]:
    return dict(w.split("=", 1) for v in _values(unit, "Service", "Environment") for w in systemd_words(v))


def unit_keys(text: str) -> list[str]:
    """Every directive a unit file sets, in order, as systemd reads the lines."""
    logical = re.sub(r"\\\n", " ", text)
    return [l.split("=", 1)[0].strip() for l in logical.splitlines()
            if l.strip() and not l.lstrip().startswith(("#", ";", "[")) and "=" in l]


# --- users and sudo -----------------------------------------------------------------

@pytest.mark.parametrize("stack,name", ALL_HOSTS)
def test_three_users_only_admin_and_operator_have_keys(hosts, stack, name):
    users = {u["name"]: u for u in hosts[stack, name].doc["users"] if isinstance(u, dict)}
    assert {"admin", "operator", "agentuser"} <= set(users)
    keys = load(ROOT, stack).admin_ssh_keys
    assert users["admin"]["ssh_authorized_keys"] == keys
    assert users["operator"]["ssh_authorized_keys"] == keys
    assert "ssh_authorized_keys" not in users["agentuser"]
    assert all(u.get("lock_passwd") for u in users.values())
    assert not any("sudo" in u.get("groups", []) or u.get("sudo") for u in users.values()), \
        "sudo rights come only from the validated sudoers file"
    assert hosts[stack, name].doc["disable_root"] is True and hosts[stack, name].doc["ssh_pwauth"] is False


def _sudo_rules(text: str) -> dict[str, str]:
    logical = re.sub(r"\\\n", " ", text)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^(admin|operator|agentuser)\s+(.*)$", logical, re.M)}


@pytest.mark.parametrize("stack,name", [("lab", "scout"), ("example-aws", "proxy")])
def test_sudoers_grants_and_guard_list(hosts, stack, name, tmp_path):
    text = hosts[stack, name].file("/etc/agentctl/sudoers")
    rules = _sudo_rules(text)
    assert rules == {"admin": "ALL=(ALL:ALL) NOPASSWD: ALL", "operator": "ALL=(ALL:ALL) NOPASSWD: ALL, !AGENTCTL_GUARDED"}
    assert re.search(r"^Defaults use_pty$", text, re.M) and re.search(r'^Defaults logfile="/var/log/sudo.log"$', text, re.M)
    guarded = re.search(r"Cmnd_Alias AGENTCTL_GUARDED = (.*?)\n\n", re.sub(r"\\\n", " ", text), re.S).group(1)
    listed = [c.strip() for c in guarded.split(",")]
    assert listed == hardening.GUARDED_COMMANDS
    for must in ("/usr/bin/rm -rf *", "/usr/bin/dd", "/usr/sbin/mkfs.*", "/usr/sbin/wipefs", "/usr/bin/shred",
                 "/usr/sbin/fdisk", "/usr/sbin/parted", "/usr/sbin/shutdown", "/usr/sbin/reboot"):
        assert must in listed
    sudoers = tmp_path / "sudoers"
    sudoers.write_text(text)
    check = subprocess.run(["visudo", "-cf", str(sudoers)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + check.stdout


def _install_sudoers(converge: str) -> str:
    return re.search(r"# BEGIN install_sudoers.*?\n(.*?)# END install_sudoers", converge, re.S).group(1)


def _run_install_sudoers(hosts, tmp_path, main_text, *, fail_visudo_call=0):
    """Run converge's own install_sudoers on a scratch sudo config (visudo is real)."""
    converge = hosts["lab", "scout"].file("/usr/local/sbin/agentctl-converge")
    src = tmp_path / "new"
    src.write_text(hosts["lab", "scout"].file("/etc/agentctl/sudoers"))
    main, folder = tmp_path / "sudoers", tmp_path / "sudoers.d"
    folder.mkdir(mode=0o750)
    main.write_text(main_text.format(dir=folder))
    main.chmod(0o440)
    (folder / "agentctl").write_text("# previous\nadmin ALL=(ALL:ALL) ALL\n")
    (folder / "agentctl").chmod(0o440)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Optionally the Nth visudo call fails: the config broke between check and landing.
    (bin_dir / "visudo").write_text(f'#!/bin/bash\nn=$(( $(cat {tmp_path}/n 2>/dev/null || echo 0) + 1 )); '
                                    f'echo $n > {tmp_path}/n\n[ "$n" = {fail_visudo_call} ] && exit 1\n'
                                    f'exec {shutil.which("visudo")} "$@"\n')
    (bin_dir / "visudo").chmod(0o755)
    script = f"log() {{ echo \"$*\" >&2; }}\n{_install_sudoers(converge)}\ninstall_sudoers {src} {main} {folder} agentctl\n"
    proc = subprocess.run(["bash", "-c", script], env={"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/bin"},
                          capture_output=True, text=True)
    return proc, folder


MAIN_SUDOERS = "Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n@includedir {dir}\n"


def test_sudoers_lands_when_the_whole_config_is_valid(hosts, tmp_path):
    proc, folder = _run_install_sudoers(hosts, tmp_path, MAIN_SUDOERS)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "agentctl").read_text() == hosts["lab", "scout"].file("/etc/agentctl/sudoers")
    assert oct((folder / "agentctl").stat().st_mode & 0o777) == "0o440"
    assert sorted(p.name for p in folder.iterdir()) == ["agentctl"]


def test_sudoers_that_breaks_the_whole_config_never_lands(hosts, tmp_path):
    """Valid alone, invalid with the rest (an alias defined twice): the old file stays."""
    proc, folder = _run_install_sudoers(hosts, tmp_path, "Cmnd_Alias AGENTCTL_GUARDED = /bin/true\n" + MAIN_SUDOERS)
    assert proc.returncode == 1 and "would be invalid" in proc.stderr
    assert (folder / "agentctl").read_text().startswith("# previous")
    assert sorted(p.name for p in folder.iterdir()) == ["agentctl"]


def test_sudoers_rolls_back_when_the_final_check_fails(hosts, tmp_path):
    proc, folder = _run_install_sudoers(hosts, tmp_path, MAIN_SUDOERS, fail_visudo_call=3)
    assert proc.returncode == 1 and "rolled back" in proc.stderr
    assert (folder / "agentctl").read_text().startswith("# previous")
    assert sorted(p.name for p in folder.iterdir()) == ["agentctl"]


# --- sshd, read through the real sshd -----------------------------------------------

def _effective_sshd(dropins: dict[str, str], tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "sshd_config.d"
    folder.mkdir()
    for name, text in dropins.items():
        (folder / name).write_text(text)
    main = tmp_path / "sshd_config"
    main.write_text(f"Include {folder}/*.conf\nPasswordAuthentication yes\nPermitRootLogin yes\nUsePAM yes\n")
    key = tmp_path / "hostkey"
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd -T insists on its privsep folder
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    out = subprocess.run([SSHD, "-T", "-f", str(main), "-h", str(key),
                          "-C", "user=admin,host=client,addr=192.0.2.7"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return hardening.parse_sshd_effective(out.stdout)


CLOUD_INIT_DROPIN = "PasswordAuthentication yes\nKbdInteractiveAuthentication yes\nPermitRootLogin yes\n"


@pytest.mark.parametrize("stack,name", [("lab", "scout"), ("example-aws", "proxy")])
def test_sshd_effective_settings_win_over_cloud_init(hosts, stack, name, tmp_path):
    ours = hosts[stack, name].file(SSHD_DROPIN)
    eff = _effective_sshd({"00-agentctl.conf": ours, "50-cloud-init.conf": CLOUD_INIT_DROPIN}, tmp_path)
    assert eff["passwordauthentication"] == "no"
    assert eff["kbdinteractiveauthentication"] == "no"
    assert eff["permitrootlogin"] == "no"
    assert eff["pubkeyauthentication"] == "yes"
    assert eff["authenticationmethods"] == "publickey"
    assert eff["allowusers"].split() == hardening.SSH_USERS
    assert int(eff["maxauthtries"]) <= 3
    assert int(eff["logingracetime"]) <= 60
    assert eff["x11forwarding"] == "no" and eff["allowagentforwarding"] == "no"
    assert eff["allowtcpforwarding"] == ("local" if name == "proxy" else "no")
    assert eff["loglevel"] == "VERBOSE"
    assert eff["kexalgorithms"].split(",") == hardening.SSH_KEX
    assert eff["ciphers"].split(",") == hardening.SSH_CIPHERS
    assert eff["macs"].split(",") == hardening.SSH_MACS


def test_ssh_algorithms_are_dev_sec_s_with_the_documented_deviation():
    """dev-sec ssh-baseline (libraries/ssh_crypto.rb) and ansible-collection-hardening
    (ssh_kex_85_default, ssh_ciphers_66_default, ssh_macs_76_default) for OpenSSH >= 8.5."""
    assert hardening.SSH_KEX == ["sntrup761x25519-sha512@openssh.com", "curve25519-sha256@libssh.org",
                                 "diffie-hellman-group-exchange-sha256"]
    assert hardening.SSH_CIPHERS == ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com",
                                     "aes128-gcm@openssh.com", "aes256-ctr", "aes192-ctr", "aes128-ctr"]
    dev_sec_macs = ["hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com", "umac-128-etm@openssh.com",
                    "hmac-sha2-512", "hmac-sha2-256"]
    assert hardening.DEV_SEC_MACS == dev_sec_macs
    # The one deviation (hardening.py says why): no encrypt-and-MAC forms.
    assert hardening.SSH_MACS == [m for m in dev_sec_macs if m.endswith("-etm@openssh.com")]


def test_sshd_dropin_order_matters(hosts, tmp_path):
    """The guard above can fail: named to sort after cloud-init's file, ours loses."""
    ours = hosts["lab", "scout"].file(SSHD_DROPIN)
    eff = _effective_sshd({"99-agentctl.conf": ours, "50-cloud-init.conf": CLOUD_INIT_DROPIN}, tmp_path)
    assert eff["passwordauthentication"] == "yes"


# --- firewall, egress, DNS, CA ------------------------------------------------------

def _ufw(host) -> list[str]:
    return [l for l in host.file("/etc/agentctl/ufw-rules").splitlines() if l and not l.startswith("#")]


@pytest.mark.parametrize("stack,name", AGENTS)
def test_agent_firewall_lets_out_only_to_the_proxy(hosts, stack, name):
    d = load(ROOT, stack)
    rules = _ufw(hosts[stack, name])
    assert rules == firewall.agent_rules(d)
    for rule in map(ufw_rule, rules):
        if rule["direction"] == "out" and rule["to"] != d.proxy_ip:
            # The one exception: DHCP, from the client port to the server port, inside the network.
            assert (rule["from_port"], rule["port"], rule["proto"]) == ("68", "67", "udp"), rule
            assert rule["to"] in {"255.255.255.255", d.network.cidr}, rule
    assert all(re.match(r"allow (out|from \S+ to any port 22 proto tcp)", r) for r in rules), rules


def ufw_rule(text: str) -> dict[str, str]:
    """One `ufw show added` rule (without its `ufw ` prefix) as fields."""
    words = shlex.split(text)
    rule = {"action": words[0], "direction": "in", "from": "any", "from_port": "any", "to": "any", "port": "any",
            "proto": "any"}
    rest = words[1:]
    if rest and rest[0] == "out":
        rule["direction"], rest = "out", rest[1:]
    if rest and "/" in rest[0] and rest[0][0].isdigit():  # short form: PORT/PROTO
        rule["port"], rule["proto"] = rest[0].split("/")
        rest = rest[1:]
    side = None
    while rest:
        word, rest = rest[0], rest[1:]
        if word in ("from", "to"):
            side = word
            rule[side], rest = rest[0], rest[1:]
        elif word == "port":
            rule["from_port" if side == "from" else "port"], rest = rest[0], rest[1:]
        elif word == "proto":
            rule["proto"], rest = rest[0], rest[1:]
        elif word == "comment":
            rule["comment"], rest = rest[0], rest[1:]
    return rule


@pytest.mark.parametrize("stack", ["lab", "example-aws", "example-hcloud"])
def test_dhcp_is_the_only_udp_out_besides_the_proxy(hosts, stack):
    """Not `allow out 67/udp` to anywhere (a UDP channel out): client port to server port."""
    d = load(ROOT, stack)
    for name in [d.proxy.name, *(a.name for a in d.agents)]:
        dhcp = [r for r in map(ufw_rule, _ufw(hosts[stack, name])) if r.get("comment") == "dhcp"]
        assert dhcp and all((r["from_port"], r["port"], r["proto"]) == ("68", "67", "udp") for r in dhcp), dhcp
        if name != d.proxy.name:
            assert sorted(r["to"] for r in dhcp) == sorted(["255.255.255.255", d.network.cidr])
    assert "ufw default deny outgoing" in hosts[stack, name].file("/usr/local/sbin/agentctl-converge")


@pytest.mark.parametrize("stack", ["lab", "example-aws", "example-hcloud"])
def test_proxy_firewall_accepts_agents_and_limits_ssh(hosts, stack):
    d = load(ROOT, stack)
    rules = _ufw(hosts[stack, d.proxy.name])
    ins = [r for r in rules if not r.startswith("allow out ")]
    for r in ins:
        src = re.search(r"from (\S+)", r)
        if src:
            assert ipaddress.ip_network(src.group(1)).subnet_of(ipaddress.ip_network(d.network.cidr)) \
                or src.group(1) in d.network.admin_cidrs, r
    assert [r.split()[2] for r in ins if r.startswith("limit from")] == d.network.admin_cidrs
    assert ("allow out to 169.254.169.254 port 80 proto tcp comment 'imds'" in rules) == (d.cloud == "aws")


@pytest.mark.parametrize("stack,name", AGENTS)
def test_agent_points_dns_apt_time_and_trust_at_the_proxy(hosts, stack, name, ca_cert_pem):
    d = load(ROOT, stack)
    h = hosts[stack, name]
    url = f"http://{d.proxy_ip}:{d.proxy.listen.tunnel}"
    assert f'Acquire::http::Proxy "{url}";' in h.file("/etc/apt/apt.conf.d/90agentctl-proxy")
    resolved = configparser.ConfigParser()
    resolved.read_string(h.file("/etc/systemd/resolved.conf.d/agentctl.conf"))
    assert resolved["Resolve"]["DNS"] == d.proxy_ip and resolved["Resolve"]["FallbackDNS"] == ""
    assert f"nameserver {d.proxy_ip}" in h.file("/usr/local/sbin/agentctl-converge")
    servers = [l.split()[1] for l in h.file("/etc/chrony/chrony.conf").splitlines() if l.startswith(("server", "pool"))]
    assert servers == [d.proxy_ip]
    assert h.file("/etc/agentctl/proxy-ca.crt").strip() == ca_cert_pem.strip()


@pytest.mark.parametrize("stack,name", AGENTS)
def test_agent_unit_is_sandboxed_and_fenced_to_the_proxy(hosts, stack, name):
    d = load(ROOT, stack)
    unit = _unit(hosts[stack, name].file("/etc/systemd/system/agentctl-agent.service"))
    s = "Service"
    assert unit[s]["User"] == "agentuser"
    for key, want in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                      "CapabilityBoundingSet": "", "AmbientCapabilities": "", "IPAddressDeny": "any"}.items():
        assert unit.get(s, key, raw=True) == want, key
    assert "@system-service" in _values(unit, s, "SystemCallFilter")
    assert _values(unit, s, "IPAddressAllow") == [f"{d.proxy_ip}/32", "localhost"]
    env = unit_environment(unit)
    assert env["HTTPS_PROXY"] == f"http://{d.proxy_ip}:{d.proxy.listen.tunnel}"
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        assert env[var].startswith("/")
    config = yaml.safe_load(hosts[stack, name].file("/etc/agentctl/agent-config.yaml"))
    assert config["approvals"]["mode"] == "manual"
    # Hermes' gateway ignores checkpoints.enabled: agentctl-snapshot delivers rollback
    agent = next(a for a in d.agents if a.name == name)
    assert "checkpoints" not in config if agent.runtime.hermes else config["checkpoints"]["enabled"]


def _commands(script: str, program: str) -> list[list[str]]:
    """Every simple command of a rendered script that runs `program`, as argv (shlex),
    without what may run it: environment assignments (`VAR=value program ...`) and the
    agent's converge's `through_proxy SECONDS program ...`."""
    logical = re.sub(r"\\\n", " ", script)
    found = []
    for line in logical.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # a line inside a multi-line quoted argument
            continue
        while words and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if words[:1] == ["through_proxy"]:
            words = words[2:]
        if words[:1] == [program]:
            found.append(words)
    return found


@pytest.mark.parametrize("stack,name", AGENTS)
def test_agent_cannot_rewrite_its_guardrails(hosts, stack, name):
    """The config (approvals manual, checkpoints on) is root's, read-only to the agent, at
    the path the unit points Hermes at (Hermes reads $HERMES_HOME/config.yaml)."""
    h = hosts[stack, name]
    unit = _unit(h.file("/etc/systemd/system/agentctl-agent.service"))
    assert unit_environment(unit)["HERMES_HOME"] == HERMES_HOME == os.path.dirname(HERMES_CONFIG)
    assert _values(unit, "Service", "ReadOnlyPaths")[0] == HERMES_CONFIG
    writable = unit.get("Service", "ReadWritePaths", raw=True).split()
    assert HERMES_HOME in writable and not any(Path(HERMES_HOME).parent == Path(w) for w in writable)
    converge = h.file("/usr/local/sbin/agentctl-converge")
    installs = [w for w in _commands(converge, "install") if w[-1] in (HERMES_CONFIG, HERMES_HOME)]
    assert installs == [["install", "-d", "-o", "root", "-g", "agentuser", "-m", "1770", HERMES_HOME],
                        ["install", "-m", "0640", "-o", "root", "-g", "agentuser", "/etc/agentctl/agent-config.yaml",
                         HERMES_CONFIG]]
    assert not [w for w in _commands(converge, "chown") + _commands(converge, "chmod") if HERMES_CONFIG in w]


@pytest.mark.parametrize("stack", ["lab", "example-aws", "example-hcloud"])
def test_an_agent_reports_ready_only_when_it_has_bootstrap_grants_to_close(rendered, hosts, stack):
    # the proxy answers /v1/ready 403 "no bootstrap" to an agent without any, and the
    # converge log would say it failed on every first boot
    d = load(ROOT, stack)
    proxy = next(h for h in rendered[stack] if h.role == "proxy")
    entries = {a["name"]: a for a in yaml.safe_load(proxy.proxy_config)["agents"]}
    seen = set()
    for agent in d.agents:
        converge = hosts[stack, agent.name].file("/usr/local/sbin/agentctl-converge")
        has_bootstrap = bool(entries[agent.name].get("bootstrap", {}).get("rules"))
        assert has_bootstrap == bool(agent.bootstrap_rules)  # its own and its runtime package's
        assert ("http://agentctl-proxy.internal/v1/ready" in converge) == has_bootstrap, agent.name
        seen.add(has_bootstrap)
    if stack != "lab":
        assert True in seen  # the examples install Hermes under bootstrap grants


# --- upgrades, sysctl, watchdog -----------------------------------------------------

@pytest.mark.parametrize("stack,name", ALL_HOSTS)
def test_unattended_upgrades_reboot_in_the_window(hosts, stack, name):
    d = load(ROOT, stack)
    text = hosts[stack, name].file("/etc/apt/apt.conf.d/52agentctl-unattended-upgrades")
    assert f'Unattended-Upgrade::Automatic-Reboot-Time "{d.maintenance.reboot_time}";' in text
    assert 'Unattended-Upgrade::Automatic-Reboot "true";' in text
    assert all(o in text for o in hardening.UPGRADE_ORIGINS[d.distro])
    assert 'APT::Periodic::Unattended-Upgrade "1";' in hosts[stack, name].file("/etc/apt/apt.conf.d/21agentctl-auto-upgrades")


def test_sysctl_network_hardening(hosts):
    values = dict(l.split(" = ") for l in hosts["lab", "scout"].file("/etc/sysctl.d/90-agentctl-net.conf").splitlines()
                  if l and not l.startswith("#"))
    assert values["net.ipv4.ip_forward"] == "0"
    # Per interface (glob), not only all/default: eth0 exists before the file applies.
    for key in ("ipv4.conf.*.accept_redirects", "ipv4.conf.*.send_redirects", "ipv4.conf.*.secure_redirects",
                "ipv6.conf.*.accept_redirects", "ipv4.conf.*.accept_source_route", "ipv6.conf.*.accept_source_route"):
        assert values["net." + key] == "0", key
    assert values["net.ipv4.tcp_syncookies"] == "1"
    assert values["net.ipv4.conf.all.rp_filter"] == "1"
    assert not any(k.startswith("kernel.") for k in values)


def test_sysctl_glob_reaches_an_interface_that_exists_already(hosts, tmp_path):
    """Applied with the real procps sysctl in a fresh network namespace whose interface
    exists before the file is applied (as eth0 on a booted host)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a scratch network namespace")
    conf = tmp_path / "net.conf"
    conf.write_text(hosts["lab", "scout"].file("/etc/sysctl.d/90-agentctl-net.conf"))
    script = (f"ip link add eth9 type veth peer name eth10 && sysctl -q -p {conf} >/dev/null 2>&1; "
              "cat /proc/sys/net/ipv4/conf/eth9/accept_redirects /proc/sys/net/ipv4/conf/eth9/send_redirects "
              "/proc/sys/net/ipv6/conf/eth9/accept_redirects")
    out = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "0", "0"]


def _set_login_def(hosts) -> str:
    converge = hosts["lab", "scout"].file("/usr/local/sbin/agentctl-converge")
    function = re.search(r"# BEGIN set_login_def.*?\n(.*?)# END set_login_def", converge, re.S).group(1)
    calls = "".join(l + "\n" for l in converge.splitlines() if l.startswith("set_login_def /etc/login.defs "))
    return function + calls


# Debian 12's own login.defs (package `login`): its comment lines start with the keys.
DEBIAN_LOGIN_DEFS = Path("/etc/login.defs")


@pytest.mark.parametrize("already_broken", [False, True])
def test_converge_sets_login_defs_once_and_keeps_the_comments(hosts, tmp_path, already_broken):
    if "UMASK is the default umask" not in (DEBIAN_LOGIN_DEFS.read_text() if DEBIAN_LOGIN_DEFS.exists() else ""):
        pytest.skip("this machine has no Debian login.defs to converge a copy of")
    original = DEBIAN_LOGIN_DEFS.read_text()
    defs = tmp_path / "login.defs"
    # What the old converge left: comment lines turned into settings.
    defs.write_text(re.sub(r"(?m)^#?\s*UMASK\s+.*", "UMASK\t\t027", original) if already_broken else original)
    script = _set_login_def(hosts).replace("/etc/login.defs", str(defs))
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=True)
    once = defs.read_text()
    for key, value in hardening.LOGIN_DEFS.items():
        assert re.findall(rf"(?m)^{key}\s+(\S+)\s*$", once) == [value], key
    if not already_broken:
        comments = [l for l in original.splitlines() if l.startswith("#")]
        assert [l for l in once.splitlines() if l.startswith("#")] == comments
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=True)
    assert defs.read_text() == once, "set_login_def is not idempotent"


def test_pam_umask_profile_enabled_by_converge(hosts):
    host = hosts["lab", "scout"]
    profile = host.file("/usr/share/pam-configs/agentctl-umask")
    assert re.search(r"^Session:\n\s+optional\s+pam_umask\.so$", profile, re.M)
    assert "pam-auth-update --package --enable agentctl-umask" in host.file("/usr/local/sbin/agentctl-converge")


@pytest.mark.parametrize("stack", ["lab", "example-aws", "example-hcloud"])
def test_fail2ban_ignores_the_agents_admin_paths(hosts, stack):
    d = load(ROOT, stack)
    jail = configparser.ConfigParser(interpolation=None)
    jail.read_string(hosts[stack, "scout"].file("/etc/fail2ban/jail.local"))
    ignored = jail["DEFAULT"]["ignoreip"].split()
    assert d.proxy_ip in ignored and "127.0.0.1/8" in ignored
    assert all(src in ignored for src, _ in firewall.admin_ssh_sources(d))
    proxy_jail = configparser.ConfigParser(interpolation=None)
    proxy_jail.read_string(hosts[stack, "proxy"].file("/etc/fail2ban/jail.local"))
    assert proxy_jail["DEFAULT"]["ignoreip"].split() == ["127.0.0.1/8", "::1"]


@pytest.mark.parametrize("threshold", [3, 2])
def test_watchdog_restarts_after_consecutive_failures(hosts, tmp_path, threshold):
    """Runs the rendered script for real, with systemctl/logger replaced by recorders."""
    script = hosts["lab", "scout"].file("/usr/local/sbin/agentctl-watchdog")
    script = script.replace("-ge 3 ]", f"-ge {threshold} ]")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n[ "$1" = is-active ] && exit 3\nexit 0\n')
    (bin_dir / "logger").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    path = tmp_path / "watchdog"
    path.write_text(script)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "AGENTCTL_WATCHDOG_STATE": str(tmp_path / "state")}
    restarts = []
    for _ in range(threshold * 2):
        subprocess.run(["bash", str(path)], env=env, check=True)
        restarts.append(calls.read_text().count("restart agentctl-agent.service"))
    assert restarts == [0] * (threshold - 1) + [1] * threshold + [2]


# --- proxy host, secrets ------------------------------------------------------------

@pytest.mark.parametrize("stack", ["lab", "example-aws", "example-hcloud"])
def test_proxy_config_grants_each_agent_its_own_rules(rendered, hosts, stack):
    d = load(ROOT, stack)
    proxy = next(h for h in rendered[stack] if h.role == "proxy")
    conf = yaml.safe_load(proxy.proxy_config)
    proxy_files = hosts[stack, d.proxy.name].files
    if d.cloud != "lab":
        # Not in a cloud proxy's user-data (a rule change would replace the proxy): AWS
        # pulls it from an SSM parameter, Hetzner gets it pushed (docs/cloud.md)
        assert "/etc/agentctl-proxy/config.yaml" not in proxy_files
        assert ("/usr/local/sbin/agentctl-proxy-policy-pull" in proxy_files) == (d.cloud == "aws")
    else:
        assert yaml.safe_load(proxy_files["/etc/agentctl-proxy/config.yaml"]["content"]) == conf
        assert "/usr/local/sbin/agentctl-proxy-policy-pull" not in proxy_files
    assert [a["name"] for a in conf["agents"]] == [a.name for a in d.agents]
    for entry, agent in zip(conf["agents"], d.agents):
        assert entry["sources"] == [f"{d.agent_ip(agent)}/32"]
        allow = next(t for t in entry["transforms"] if t["name"] == "allowlist")["config"]["rules"]
        assert [r["host"] for r in allow] == [r.host for r in agent.egress.rules]
    assert all(r["methods"] == ["GET", "HEAD"] for r in conf["transforms"][0]["config"]["rules"]
               if r["name"].startswith("apt-"))
    assert conf["proxy"]["tunnel_listen"] == f"{d.proxy_ip}:{d.proxy.listen.tunnel}"
    assert conf["dns"]["proxy_ip"] == d.proxy_ip


def test_secret_sources_by_cloud(rendered):
    def sources(stack):
        conf = yaml.safe_load(next(h for h in rendered[stack] if h.role == "proxy").proxy_config)
        return [s["source"] for a in conf["agents"] for t in a["transforms"] if t["name"] == "secrets"
                for s in t["config"]["secrets"]], conf["tls"]

    aws, aws_tls = sources("example-aws")
    assert {s["type"] for s in aws} == {"aws_ssm"}
    assert {s["name"] for s in aws} == {"/agentctl/example-aws/scout/anthropic-key", "/agentctl/example-aws/scout/github-pat",
                                         "/agentctl/example-aws/scout/bot-token"}
    assert "ca_key" not in aws_tls and aws_tls["ca_key_source"]["name"] == "/agentctl/example-aws/_proxy/ca-key"
    hc, hc_tls = sources("example-hcloud")
    assert hc == [{"type": "file", "path": f"/etc/agentctl-proxy/secrets/scout/{name}", "ttl": "15m",
                   "failure_ttl": "30s"} for name in ("anthropic-key", "github-pat", "bot-token")]
    assert hc_tls["ca_key"] == "/etc/agentctl-proxy/ca.key"


@pytest.mark.parametrize("stack", ["lab", "example-aws", "example-hcloud"])
def test_no_secret_or_ca_key_in_user_data(rendered, stack):
    for h in rendered[stack]:
        assert "placeholder" not in h.user_data  # the ciphertext of Pulumi secrets
        assert "PRIVATE KEY" not in h.user_data


def test_lab_has_no_packages_clouds_do(hosts):
    assert "packages" not in hosts["lab", "scout"].doc
    cloud = hosts["example-aws", "scout"].doc
    assert cloud["package_update"] is True and {"ufw", "fail2ban", "openssh-server"} <= set(cloud["packages"])


@pytest.mark.parametrize("stack,name", ALL_HOSTS)
def test_scripts_parse(hosts, stack, name, tmp_path):
    for path in ("/usr/local/sbin/agentctl-converge", "/usr/local/sbin/agentctl-watchdog"):
        script = tmp_path / "s.sh"
        script.write_text(hosts[stack, name].file(path))
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, f"{path}: {check.stderr}"


# --- size ---------------------------------------------------------------------------

@pytest.mark.parametrize("stack,name", ALL_HOSTS)
def test_fits_ec2_user_data_limit(hosts, stack, name):
    encoded = ec2_user_data_base64(hosts[stack, name].rendered.user_data)
    raw = base64.b64decode(encoded)
    assert len(raw) <= EC2_USER_DATA_LIMIT  # EC2 counts the raw bytes, before base64
    text = gzip.decompress(raw).decode() if raw[:2] == b"\x1f\x8b" else raw.decode()
    assert text == hosts[stack, name].rendered.user_data


def test_tailscale_only_where_configured(hosts):
    hc = hosts["example-hcloud", "proxy"]
    unit = _unit(hc.file("/etc/systemd/system/agentctl-tailscale-up.service"))
    assert "--advertise-routes=10.0.2.0/24" in unit["Service"]["ExecStart"]
    assert "tailscale status" in hc.file("/usr/local/sbin/agentctl-watchdog")
    assert "/etc/systemd/system/agentctl-tailscale-up.service" not in hosts["example-aws", "proxy"].files
    assert not any("tailscale" in p for p in hosts["example-hcloud", "scout"].files)


def test_aws_proxy_resolves_without_the_vpc_resolver(hosts):
    aws = hosts["example-aws", "proxy"]
    resolved = configparser.ConfigParser()
    resolved.read_string(aws.file("/etc/systemd/resolved.conf.d/agentctl-proxy.conf"))
    assert resolved["Resolve"]["DNS"].split() == load(ROOT, "example-aws").proxy.resolvers
    assert ["/usr/local/sbin/agentctl-proxy-resolvers"] in _commands(aws.file("/usr/local/sbin/agentctl-converge"),
                                                                     "/usr/local/sbin/agentctl-proxy-resolvers")
    assert "/etc/systemd/resolved.conf.d/agentctl-proxy.conf" not in hosts["example-hcloud", "proxy"].files
    assert "bootcmd" not in hosts["example-hcloud", "proxy"].doc and "bootcmd" not in hosts["lab", "proxy"].doc


def _cloud_init_stage(distro: str) -> dict[str, tuple[int, int]]:
    """Module name -> (stage, position), from the cloud.cfg cloud-init ships."""
    from agentctl import cloudinit_check
    cfg = yaml.safe_load((cloudinit_check.ensure(distro) / "etc/cloud/cloud.cfg").read_text())
    stages = ["cloud_init_modules", "cloud_config_modules", "cloud_final_modules"]
    return {(m if isinstance(m, str) else m[0]).replace("-", "_"): (s, i)
            for s, stage in enumerate(stages) for i, m in enumerate(cfg[stage])}


@pytest.mark.parametrize("distro", ["debian-12", "ubuntu-24.04"])
def test_aws_proxy_switches_resolvers_before_packages_and_pip(hosts, distro):
    """The VPC resolver answers NXDOMAIN to the proxy too: its own resolvers must be in
    place before cloud-init installs packages and converge pip-installs the proxy."""
    doc = hosts["example-aws", "proxy"].doc
    order = _cloud_init_stage(distro)
    assert doc["packages"] and doc["runcmd"] == [["/usr/local/sbin/agentctl-converge"]]
    assert order["bootcmd"] < order["package_update_upgrade_install"] < order["scripts_user"]
    (bash, flag, script), = doc["bootcmd"]
    assert (bash, flag) == ("bash", "-c")
    assert script == hosts["example-aws", "proxy"].file("/usr/local/sbin/agentctl-proxy-resolvers")


@pytest.mark.parametrize("resolved_active", [True, False])
def test_aws_proxy_bootcmd_sets_its_own_resolvers(hosts, tmp_path, resolved_active):
    """Run the bootcmd script on a scratch root: systemd-resolved (netplan/networkd) or
    plain resolv.conf (ifupdown + dhclient)."""
    d = load(ROOT, "example-aws")
    (script,) = [c[2] for c in hosts["example-aws", "proxy"].doc["bootcmd"]]
    root, bin_dir, calls = tmp_path / "root", tmp_path / "bin", tmp_path / "calls"
    (root / "run/systemd/network").mkdir(parents=True)
    (root / "run/systemd/network/10-netplan-ens5.network").write_text("[Match]\nName=ens5\n")
    bin_dir.mkdir()
    for tool, rc in (("systemctl", 0 if resolved_active else 3), ("networkctl", 0)):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho {tool} "$@" >> {calls}\nexit {rc}\n')
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "AGENTCTL_ROOT": str(root)}
    for _ in range(2):  # every boot: the second run states the same result
        subprocess.run(["bash", "-c", script], env=env, check=True)
    conf = configparser.ConfigParser()
    conf.read_string((root / "etc/systemd/resolved.conf.d/agentctl-proxy.conf").read_text())
    assert conf["Resolve"]["DNS"].split() == d.proxy.resolvers
    dropin = configparser.ConfigParser()
    dropin.read_string((root / "etc/systemd/network/10-netplan-ens5.network.d/agentctl-no-dhcp-dns.conf").read_text())
    assert {dropin[s]["UseDNS"] for s in ("DHCPv4", "DHCPv6", "IPv6AcceptRA")} == {"no"}
    recorded = calls.read_text().splitlines()
    if resolved_active:
        assert "systemctl restart --no-block systemd-resolved.service" in recorded
        assert not (root / "etc/resolv.conf").exists()
    else:
        servers = [l.split()[1] for l in (root / "etc/resolv.conf").read_text().splitlines()
                   if l.startswith("nameserver")]
        assert servers == d.proxy.resolvers
        assert (root / "etc/dhcp/dhclient-enter-hooks.d/agentctl-keep-resolv-conf").is_file()


def test_aws_admin_ssh_comes_from_the_instance_connect_endpoint_subnet(hosts):
    rules = _ufw(hosts["example-aws", "scout"])
    assert "allow from 10.0.2.0/24 to any port 22 proto tcp comment 'admin ssh via EC2 Instance Connect Endpoint'" in rules
    assert "allow from 10.77.0.0/24 to any port 22 proto tcp comment 'admin ssh'" in _ufw(hosts["lab", "scout"])


@pytest.mark.parametrize("stack,name", [h for h in ALL_HOSTS if h[0] == "example-hcloud"])
def test_fits_hetzner_user_data_limit(hosts, stack, name):
    # Hetzner takes user-data as text, up to 32 KiB: what fits goes as it is, a larger
    # document (the proxy's, with its install-secret helper and bounds) gzip+base64.
    text = hosts[stack, name].rendered.user_data
    sent = hcloud_user_data(text)
    assert len(sent.encode()) <= HCLOUD_USER_DATA_LIMIT
    if len(text.encode()) <= HCLOUD_USER_DATA_LIMIT:
        assert sent == text
    else:
        assert gzip.decompress(base64.b64decode(sent, validate=True)).decode() == text


def test_hetzner_user_data_over_the_limit_is_compressed():
    text = "#cloud-config\n" + "".join(f"# line {i} of a long document\n" for i in range(3000))
    assert len(text.encode()) > HCLOUD_USER_DATA_LIMIT
    encoded = hcloud_user_data(text)
    assert len(encoded.encode()) <= HCLOUD_USER_DATA_LIMIT
    assert gzip.decompress(base64.b64decode(encoded, validate=True)).decode() == text
    noise = "#cloud-config\n# " + base64.b64encode(os.urandom(40000)).decode() + "\n"  # does not compress
    with pytest.raises(ValueError, match="Hetzner takes 32768"):
        hcloud_user_data(noise)


def test_every_written_file_is_a_readable_literal_block(rendered):
    """A trailing space anywhere in a template makes YAML fall back to one quoted line
    (\\n escapes): user-data an operator can no longer read. Each file stays a block."""
    for stack, hosts in rendered.items():
        for h in hosts:
            quoted = [line for line in h.user_data.splitlines() if line.lstrip().startswith('content: "')]
            assert not quoted, f"{stack}/{h.name}: {quoted[0][:80]}"
