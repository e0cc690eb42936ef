"""What every converged host (proxy and agent) must show. One test, one fact; the
expected values come from the stack file that rendered the host."""
from __future__ import annotations

import fnmatch
import re

import pytest
import yaml

from agentctl import firewall, hardening
from agentctl.render import TEMPLATES, watched_service

# Every file the base role writes (from the same manifest render used), plus what
# converge derives from them.
MANAGED = [item["path"] for item in yaml.safe_load((TEMPLATES / "files.yaml").read_text())] + [
    "/etc/sudoers.d/agentctl", "/etc/ufw/user.rules", "/etc/ufw/user6.rules", "/etc/login.defs",
    "/etc/pam.d/common-session"]


# --- cloud-init ---------------------------------------------------------------------

def test_cloud_init_done(root):
    assert root.run("cloud-init status --wait").stdout.split()[-1] == "done"


def test_converge_recorded(host):
    assert host.file("/var/lib/agentctl/converged").exists


def test_converge_is_idempotent(root):
    """Re-running the modules and the converge script changes no managed file."""
    # With the firewall off, re-running converge would turn it on under this very SSH
    # session (untracked, so dropped as invalid): that host is not converged anyway.
    assert "Status: active" in root.check_output("ufw status"), "ufw is off: the host is not in its converged state"
    digest = "sha256sum " + " ".join(MANAGED) + " && ufw show added && sysctl -a 2>/dev/null | grep '^net.ipv4.conf.all'"
    before = root.check_output(digest)
    root.check_output("cloud-init single --name write_files --frequency always >/dev/null 2>&1 || "
                      "cloud-init single --name write-files --frequency always >/dev/null")
    root.check_output("/usr/local/sbin/agentctl-converge >/dev/null")
    assert root.check_output(digest) == before


# --- users and sudo -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["admin", "operator", "agentuser"])
def test_user_exists(host, name):
    assert host.user(name).exists


def test_agentuser_has_no_sudo(root):
    out = root.run("sudo -l -U agentuser").stdout
    assert "is not allowed to run sudo" in out


def test_agentuser_not_in_privileged_groups(host):
    assert not {"sudo", "adm", "wheel", "systemd-journal", "docker"} & set(host.user("agentuser").groups)


def test_admin_has_full_sudo(root):
    assert "(ALL : ALL) NOPASSWD: ALL" in root.check_output("sudo -l -U admin")


def test_operator_sudo_excludes_the_guard_list(root):
    out = root.check_output("sudo -l -U operator")
    for command in ("/usr/bin/dd", "/usr/sbin/wipefs", "/usr/sbin/shutdown"):
        assert f"!{command}" in out, out


@pytest.mark.parametrize("command", ["/usr/bin/dd if=/dev/zero of=/dev/null count=0", "/usr/sbin/reboot",
                                     "/usr/bin/rm -rf /tmp/agentctl-guard-probe"])
def test_operator_guard_list_refuses(root, command):
    result = root.run(f"sudo -u operator sudo -n {command}")
    assert result.rc != 0 and "not allowed" in (result.stderr + result.stdout), result


def test_operator_may_run_other_commands(root):
    assert root.run("sudo -u operator sudo -n /usr/bin/true").rc == 0


def test_sudoers_valid_and_logged(root):
    assert root.run("visudo -c").rc == 0
    out = root.check_output("cat /etc/sudoers.d/agentctl")
    assert re.search(r"^Defaults use_pty$", out, re.M) and 'logfile="/var/log/sudo.log"' in out


# --- sshd ---------------------------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("passwordauthentication", "no"), ("kbdinteractiveauthentication", "no"), ("permitrootlogin", "no"),
    ("pubkeyauthentication", "yes"), ("permitemptypasswords", "no"), ("x11forwarding", "no"),
    ("allowagentforwarding", "no"), ("loglevel", "VERBOSE"), ("authenticationmethods", "publickey"),
])
def test_sshd_effective(sshd, key, value):
    assert sshd[key] == value


def test_sshd_allow_users(sshd):
    assert sshd["allowusers"].split() == hardening.SSH_USERS


def test_sshd_algorithms(sshd):
    assert sshd["kexalgorithms"].split(",") == hardening.SSH_KEX
    assert sshd["ciphers"].split(",") == hardening.SSH_CIPHERS
    assert sshd["macs"].split(",") == hardening.SSH_MACS


def test_sshd_forwarding(sshd, role):
    assert sshd["allowtcpforwarding"] == ("local" if role == "proxy" else "no")


@pytest.fixture(scope="module")
def from_itself(root, private_ip):
    """Run an SSH client on the host against its own private address, so the failed
    logins these tests make never come from (and never ban) the verifier. fail2ban
    ignores that address for the whole module: it reads the journal a moment behind,
    and a line it reads late must not ban the address another test uses next."""
    opts = ("-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 "
            f"-b {private_ip}")
    root.run(f"fail2ban-client set sshd unbanip {private_ip}; fail2ban-client set sshd addignoreip {private_ip}")

    def ssh(args: str):
        return root.run(f"timeout 20 ssh {opts} {args}")

    yield ssh
    root.run(f"fail2ban-client set sshd delignoreip {private_ip}; fail2ban-client set sshd unbanip {private_ip}")


def test_server_offers_publickey_only(from_itself, private_ip):
    """No password or keyboard-interactive method is even offered to a client that asks."""
    result = from_itself(f"-v -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive "
                         f"admin@{private_ip} true")
    assert result.rc != 0
    offered = re.findall(r"Authentications that can continue: (\S+)", result.stderr)
    assert offered and set(offered) == {"publickey"}, result.stderr


def test_real_root_login_refused(root, from_itself, private_ip):
    """Even with a key root trusts, root cannot log in."""
    root.check_output("install -d -m 0700 /root/.ssh && rm -f /root/.agentctl-probe* && "
                      "ssh-keygen -q -t ed25519 -N '' -f /root/.agentctl-probe && "
                      "cp -a /root/.ssh/authorized_keys /root/.ssh/authorized_keys.probe-backup 2>/dev/null; "
                      "cat /root/.agentctl-probe.pub >> /root/.ssh/authorized_keys")
    try:
        result = from_itself(f"-i /root/.agentctl-probe -o IdentitiesOnly=yes root@{private_ip} true")
        assert result.rc == 255 and "Permission denied" in result.stderr, result.stderr
    finally:
        root.run("if [ -e /root/.ssh/authorized_keys.probe-backup ]; then "
                 "mv /root/.ssh/authorized_keys.probe-backup /root/.ssh/authorized_keys; "
                 "else rm -f /root/.ssh/authorized_keys; fi; rm -f /root/.agentctl-probe /root/.agentctl-probe.pub")


def test_agentuser_cannot_log_in_over_ssh(from_itself, private_ip):
    result = from_itself(f"agentuser@{private_ip} true")
    assert result.rc == 255 and "Permission denied" in result.stderr


# --- fail2ban -----------------------------------------------------------------------

def test_fail2ban_never_bans_the_admin_paths(root, deployment, role):
    """On an agent host every admin arrives through the proxy (jump host) or the admin
    sources: banning one of those would lock every admin out."""
    ignored = root.check_output("fail2ban-client get sshd ignoreip")
    for source in firewall.fail2ban_ignored(deployment, role):
        assert source in ignored, ignored
    if role == "agent":
        assert deployment.proxy_ip in ignored, ignored


def test_fail2ban_sshd_jail_reads_the_journal(root):
    assert root.service("fail2ban").is_running
    assert "sshd" in root.check_output("fail2ban-client status")
    assert root.check_output("fail2ban-client get sshd journalmatch").strip() != ""


# TEST-NET-1 (RFC 5737): never a real client, never the verifier, and used by no
# other test, so no failure another test left in the journal can ban or unban it.
ATTACKER = "192.0.2.77"


@pytest.fixture
def attacker(root):
    """A source address of its own on the host's loopback, for the ban test only."""
    root.check_output(f"ip addr replace {ATTACKER}/32 dev lo")
    root.run(f"fail2ban-client set sshd unbanip {ATTACKER}")

    def ssh(timeout: int = 5):
        return root.run(f"timeout 20 ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                        f"-o ConnectTimeout={timeout} -o PubkeyAuthentication=no -b {ATTACKER} nosuchuser@{ATTACKER} true")

    yield ssh
    root.run(f"fail2ban-client set sshd unbanip {ATTACKER}; ip addr del {ATTACKER}/32 dev lo")


def _banned(root) -> bool:
    return ATTACKER in root.check_output("fail2ban-client get sshd banip").split()


@pytest.mark.destructive
def test_fail2ban_bans_after_repeated_failures(root, attacker):
    """maxretry failed logins ban the client, and the ban holds: its next connection
    never reaches sshd."""
    maxretry = hardening.FAIL2BAN_MAXRETRY
    assert int(root.check_output("fail2ban-client get sshd maxretry")) == maxretry
    for _ in range(maxretry):
        assert attacker().rc == 255
        # fail2ban reads the journal a moment behind the failure.
        if root.run(f"for i in $(seq 10); do fail2ban-client get sshd banip | grep -qw '{ATTACKER}' && exit 0; "
                    f"sleep 0.5; done; exit 1").rc == 0:
            break
    assert _banned(root), f"not banned after {maxretry} failures: " + root.check_output("fail2ban-client status sshd")
    blocked = attacker(timeout=3)
    assert blocked.rc == 255 and "Permission denied" not in blocked.stderr, blocked.stderr


# --- firewall -----------------------------------------------------------------------

def test_ufw_active_default_deny_both_ways(root):
    out = root.check_output("ufw status verbose")
    assert "Status: active" in out
    assert re.search(r"Default: deny \(incoming\), deny \(outgoing\), (deny|disabled) \(routed\)", out), out


def test_ufw_rules_exactly_as_rendered(root, deployment, role):
    expected = firewall.agent_rules(deployment) if role == "agent" else firewall.proxy_rules(deployment)
    added = [l.removeprefix("ufw ") for l in root.check_output("ufw show added").splitlines() if l.startswith("ufw ")]
    assert added == expected


# --- upgrades, sysctl, watchdog -----------------------------------------------------

def test_unattended_upgrades_reboot_window(root, deployment):
    dump = root.check_output("apt-config dump")
    assert f'Unattended-Upgrade::Automatic-Reboot-Time "{deployment.maintenance.reboot_time}";' in dump
    assert 'Unattended-Upgrade::Automatic-Reboot "true";' in dump
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump


def test_unattended_upgrades_take_security_origins_only(root, deployment):
    """The effective lists, after every apt.conf.d file: ours alone (apt appends a list
    across files, and Debian's 50unattended-upgrades also allows its ordinary updates)."""
    dump = root.check_output("apt-config dump").splitlines()
    patterns = [l.split(" ", 1)[1].strip('";') for l in dump if l.startswith("Unattended-Upgrade::Origins-Pattern:: ")]
    allowed = [l for l in dump if l.startswith("Unattended-Upgrade::Allowed-Origins:: ")]
    assert patterns == hardening.UPGRADE_ORIGINS[deployment.distro] and not allowed, (patterns, allowed)


def _sysctl_file(host, path):
    """(key, value) per setting; a glob key (`net.ipv4.conf.*.x`) stands for every key
    it matches on the host, as sysctl and systemd-sysctl expand it."""
    pairs = [l.split(" = ") for l in host.file(path).content_string.splitlines() if l and not l.startswith("#")]
    if not any("*" in key for key, _ in pairs):
        return pairs
    known = [l.split(" = ")[0] for l in host.run("sysctl -a 2>/dev/null").stdout.splitlines()]
    return [(k, value) for key, value in pairs for k in (fnmatch.filter(known, key) if "*" in key else [key])]


def test_ufw_applies_our_sysctls_when_it_starts(root):
    assert "IPT_SYSCTL=/etc/sysctl.d/90-agentctl-net.conf" in root.file("/etc/default/ufw").content_string


def test_net_sysctls_applied(host):
    for key, value in _sysctl_file(host, "/etc/sysctl.d/90-agentctl-net.conf"):
        assert host.sysctl(key) == int(value), key


def _interfaces(host, family):
    return sorted(set(host.run(f"ls /proc/sys/net/{family}/conf").stdout.split()) - {"all", "default"})


@pytest.mark.parametrize("family,key", [("ipv4", "accept_redirects"), ("ipv4", "send_redirects"),
                                        ("ipv4", "secure_redirects"), ("ipv4", "accept_source_route"),
                                        ("ipv6", "accept_redirects"), ("ipv6", "accept_source_route"),
                                        ("ipv6", "accept_ra"), ("ipv6", "autoconf")])
def test_no_icmp_redirects_or_source_routes_on_any_interface(host, family, key):
    """Checked on each interface, eth0 included: the kernel ORs `all` with the
    interface for IPv4 and reads only the interface for IPv6 (router advertisements
    and autoconfiguration too: no host here has IPv6)."""
    interfaces = _interfaces(host, family)
    assert "lo" in interfaces and len(interfaces) > 1, interfaces
    on = {i: v for i in interfaces if (v := host.sysctl(f"net.{family}.conf.{i}.{key}")) != 0}
    assert not on, f"{key} still on: {on}"


def test_kernel_sysctls_applied(root, own_kernel):
    own_kernel("kernel.* sysctls")  # read as root: some (net.core.bpf_jit_harden) are root's alone
    for key, value in _sysctl_file(root, "/etc/sysctl.d/91-agentctl-kernel.conf"):
        assert root.sysctl(key) == int(value), key


def test_legal_banner(host):
    assert "Authorised access only" in host.file("/etc/issue.net").content_string


def test_no_core_dumps(host):
    assert "* hard core 0" in host.file("/etc/security/limits.d/90-agentctl-no-core.conf").content_string
    assert host.run("bash -c 'ulimit -Hc'").stdout.strip() == "0"


@pytest.mark.parametrize("module", hardening.BLACKLISTED_MODULES)
def test_unused_kernel_modules_cannot_load(host, module):
    """In the form dev-sec's os-10 and lynis read as disabled; loading is judged only
    where the host has its own kernel."""
    assert f"install {module} /bin/true" in host.file("/etc/modprobe.d/agentctl-blacklist.conf").content_string


@pytest.mark.parametrize("key", sorted(hardening.LOGIN_DEFS))
def test_login_defs_sets_each_key_once(host, key):
    settings = re.findall(rf"^{key}\s+(\S+)\s*$", host.file("/etc/login.defs").content_string, re.M)
    assert settings == [hardening.LOGIN_DEFS[key]]


def test_login_defs_comments_stay_comments(host):
    """The distribution documents each key in comment lines that start with its name."""
    text = host.file("/etc/login.defs").content_string
    assert re.search(r"^#\s*UMASK is the default umask value", text, re.M), "login.defs lost its UMASK comment"


def test_login_sessions_get_the_umask(host):
    """pam_umask applies login.defs' UMASK to SSH sessions (this one, as admin)."""
    assert host.run("umask").stdout.strip() == "0" + hardening.LOGIN_DEFS["UMASK"]


def test_no_unit_failed(host):
    """A unit that failed on a converged host is a fault someone must look at (a unit
    that cannot work where the host runs is masked or conditioned, not left failing)."""
    failed = host.run("systemctl --failed --no-legend --plain").stdout.strip()
    assert not failed, failed


# Started at boot, not only running now: a wants link for each unit converge turns on
# (unit_on, which trusts `systemctl is-enabled` before it enables anything), read from
# the file system rather than from systemctl.
BOOT_UNITS = ("fail2ban.service", "sysstat.service", "unattended-upgrades.service", "chrony.service",
              "ufw.service", "agentctl-watchdog.timer")


def _wants_links(root, unit: str) -> list[str]:
    return root.run(f"find /etc/systemd/system -path '*.wants/{unit}'").stdout.split()


@pytest.mark.parametrize("unit", BOOT_UNITS)
def test_unit_starts_at_boot(root, unit):
    assert _wants_links(root, unit), f"{unit}: no wants link in /etc/systemd/system, so it does not start at boot"


def test_auditd_starts_at_boot(root, own_kernel):
    own_kernel("the audit subsystem")
    assert _wants_links(root, "auditd.service"), "auditd.service does not start at boot"


def test_watchdog_timer_enabled(host):
    timer = host.service("agentctl-watchdog.timer")
    assert timer.is_enabled and timer.is_running


def test_watchdog_watches_the_role_service(root, role):
    assert watched_service(role) in root.file("/usr/local/sbin/agentctl-watchdog").content_string


# --- audit --------------------------------------------------------------------------

AUDIT_RULES = "/etc/audit/rules.d/90-agentctl.rules"


def test_auditd_runs_with_our_rules_loaded(root, own_kernel):
    """Every rule of ours is in the kernel: as many loaded rules with each key as the
    file has lines with it (auditctl -l prints a watch on a folder as a dir= rule)."""
    own_kernel("the audit subsystem")
    assert root.service("auditd").is_running
    ours = [line for line in root.file(AUDIT_RULES).content_string.splitlines() if line.startswith(("-w", "-a"))]
    loaded = root.check_output("auditctl -l").splitlines()
    for key in sorted({line.rsplit("-k ", 1)[1] for line in ours}):
        want = sum(line.endswith(f"-k {key}") for line in ours)
        assert sum(line.endswith(f"key={key}") or line.endswith(f"-k {key}") for line in loaded) == want, key


def test_a_change_to_sudoers_is_logged_with_who_made_it(root, own_kernel, audited):
    """A chmod through sudo (to the mode it has) is an attribute change auditd records,
    with the admin's login uid: sudo does not hide who it was."""
    own_kernel("the audit subsystem")
    found = audited("privilege", "chmod \"$(stat -c %a /etc/sudoers.d)\" /etc/sudoers.d")
    assert "auid=admin" in found, found


def test_hardware_watchdog_armed(root, own_kernel):
    """systemd pets the machine's watchdog (system.conf.d); the VM lab's e2e test hangs
    PID 1 and sees the machine come back."""
    own_kernel("the hardware watchdog")
    if not root.file("/dev/watchdog0").exists:
        pytest.skip("this machine has no hardware watchdog")
    usec = root.check_output("busctl get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 "
                             "org.freedesktop.systemd1.Manager RuntimeWatchdogUSec")
    assert usec == f"t {hardening.HARDWARE_WATCHDOG_SEC * 1_000_000}"
    state = root.file("/sys/class/watchdog/watchdog0/state")
    assert not state.exists or state.content_string.strip() == "active"
