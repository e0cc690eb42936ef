"""dev-sec ssh-baseline 2.8 (controls/sshd_spec.rb, controls/ssh_spec.rb), control by
control, on the effective configuration: `sshd -T` and `ssh -G`, which follow the
Include'd drop-ins that InSpec's sshd_config resource ignores. A control fails, or is
waived in roles/baseline-waivers.yaml; a waived control that passes fails as stale."""
from __future__ import annotations

import re

import pytest

from agentctl import hardening

# control -> (sshd -T keyword, the values dev-sec accepts); None: the keyword must be absent
SERVER = {
    "sshd-01": ("ciphers", [",".join(hardening.SSH_CIPHERS)]),
    "sshd-02": ("kexalgorithms", [",".join(hardening.SSH_KEX)]),
    "sshd-03": ("macs", [",".join(hardening.DEV_SEC_MACS)]),
    "sshd-06": ("permitrootlogin", ["no", "without-password", "prohibit-password"]),
    "sshd-07": ("port", ["22"]),
    "sshd-08": ("addressfamily", ["inet", "inet6", "any"]),
    "sshd-10": ("protocol", ["2"]),
    "sshd-11": ("strictmodes", ["yes"]),
    "sshd-12": ("syslogfacility", ["AUTH"]),
    "sshd-13": ("loglevel", ["VERBOSE"]),
    "sshd-15": ("uselogin", None),                # OpenSSH >= 7.4
    "sshd-16": ("useprivilegeseparation", None),  # OpenSSH >= 7.5
    "sshd-17": ("permituserenvironment", ["no"]),
    "sshd-18": ("logingracetime", ["30"]),        # dev-sec writes 30s; -T prints seconds
    "sshd-19": ("maxauthtries", ["2"]),
    "sshd-20": ("maxsessions", ["10"]),
    "sshd-21": ("maxstartups", ["10:30:60"]),
    "sshd-22": ("pubkeyauthentication", ["yes"]),
    "sshd-23": ("ignorerhosts", ["yes"]),
    "sshd-24": ("ignoreuserknownhosts", ["yes"]),
    "sshd-25": ("hostbasedauthentication", ["no"]),
    "sshd-27": ("passwordauthentication", ["no"]),
    "sshd-28": ("permitemptypasswords", ["no"]),
    "sshd-29": ("kbdinteractiveauthentication", ["no"]),  # ChallengeResponseAuthentication's name since 8.7
    "sshd-30": ("kerberosauthentication", ["no"]),
    "sshd-31": ("kerberosorlocalpasswd", ["no"]),
    "sshd-32": ("kerberosticketcleanup", ["yes"]),
    "sshd-33": ("gssapiauthentication", ["no"]),
    "sshd-34": ("gssapicleanupcredentials", ["yes"]),
    "sshd-35": ("tcpkeepalive", ["no"]),
    "sshd-36": ("clientaliveinterval", ["300"]),
    "sshd-37": ("clientalivecountmax", ["3"]),
    "sshd-38": ("permittunnel", ["no"]),
    "sshd-39": ("allowtcpforwarding", ["no"]),
    "sshd-40": ("allowagentforwarding", ["no"]),
    "sshd-41": ("gatewayports", ["no"]),
    "sshd-42": ("x11forwarding", ["no"]),
    "sshd-43": ("x11uselocalhost", ["yes"]),
    "sshd-44": ("printmotd", ["no"]),
    "sshd-45": ("printlastlog", ["no"]),
    "sshd-46": ("banner", ["none"]),
}
# control -> (ssh -G keyword, accepted values), the client as any user on the host gets it
CLIENT = {
    "ssh-02": ("addressfamily", ["inet", "inet6", "any"]),
    "ssh-03": ("port", ["22"]),
    "ssh-04": ("protocol", ["2"]),
    "ssh-05": ("batchmode", ["no"]),
    "ssh-06": ("checkhostip", ["yes"]),
    "ssh-07": ("stricthostkeychecking", ["ask", "yes", "true"]),
    "ssh-08": ("ciphers", [",".join(hardening.SSH_CIPHERS)]),
    "ssh-09": ("kexalgorithms", [",".join(hardening.SSH_KEX)]),
    "ssh-10": ("macs", [",".join(hardening.DEV_SEC_MACS)]),
    "ssh-11": ("forwardagent", ["no"]),
    "ssh-12": ("forwardx11", ["no"]),
    "ssh-13": ("hostbasedauthentication", ["no"]),
    "ssh-14": ("rhostsrsaauthentication", ["no"]),
    "ssh-15": ("rsaauthentication", ["yes"]),
    "ssh-16": ("passwordauthentication", ["no"]),
    "ssh-17": ("gssapiauthentication", ["no"]),
    "ssh-18": ("gssapidelegatecredentials", ["no"]),
    "ssh-19": ("tunnel", ["no", "false"]),
    "ssh-20": ("permitlocalcommand", ["no"]),
    "ssh-21": ("useroaming", ["no"]),
}


def _every(sshd_out: str, keyword: str) -> list[str]:
    """Every value of a keyword sshd -T prints once per value (listenaddress, hostkey)."""
    return [line.split(None, 1)[1] for line in sshd_out.splitlines() if line.startswith(f"{keyword} ")]


@pytest.fixture(scope="module")
def ssh_g(root) -> dict[str, str]:
    # The system-wide client config only (-F), for a host no Host block names.
    return hardening.parse_sshd_effective(root.check_output("ssh -G -F /etc/ssh/ssh_config baseline.invalid"))


def keyword_holds(effective: dict[str, str], keyword: str, accepted: list[str] | None) -> tuple[bool, str]:
    have = effective.get(keyword)
    if accepted is None:
        return have is None, f"{keyword} is {have!r}, expected it gone"
    return have in accepted, f"{keyword} is {have!r}, expected one of {accepted}"


@pytest.mark.parametrize("control", SERVER)
def test_sshd_baseline(judge, sshd, control):
    judge(control, *keyword_holds(sshd, *SERVER[control]))


@pytest.mark.parametrize("control", CLIENT)
def test_ssh_client_baseline(judge, ssh_g, control):
    judge(control, *keyword_holds(ssh_g, *CLIENT[control]))


def test_ssh_22_client_crypto_policy(judge, ssh_g):
    want = {"ciphers": hardening.SSH_CIPHERS, "kexalgorithms": hardening.SSH_KEX, "macs": hardening.DEV_SEC_MACS}
    wrong = {k: ssh_g.get(k) for k, v in want.items() if ssh_g.get(k) != ",".join(v)}
    judge("ssh-22", not wrong, f"ssh -G differs from dev-sec's lists: {wrong}")


def _mode(host, path):
    f = host.file(path)
    return f.exists, f.user, f.group, f.mode


def test_sshd_04_ssh_folder(judge, host):
    exists, user, group, mode = _mode(host, "/etc/ssh")
    ok = exists and (user, group) == ("root", "root") and mode & 0o022 == 0 and mode & 0o555 == 0o555
    judge("sshd-04", ok, f"/etc/ssh is {user}:{group} {mode:o}, expected root:root, writable by root only")


def test_sshd_05_server_config_is_roots_alone(judge, host, root):
    # dev-sec checks sshd_config; the drop-ins hold most of the config, so them too.
    paths = ["/etc/ssh/sshd_config", *root.check_output("ls /etc/ssh/sshd_config.d/*.conf").split()]
    bad = {p: f"{u}:{g} {m:o}" for p in paths for _, u, g, m in [_mode(host, p)]
           if (u, g) != ("root", "root") or m & 0o177 or m & 0o600 != 0o600}
    judge("sshd-05", not bad, f"expected root:root 0600: {bad}")


def test_sshd_09_listen_address(judge, sshd_out):
    """dev-sec asks for a ListenAddress; what it guards against is a wildcard one."""
    listen = _every(sshd_out, "listenaddress")
    wild = [a for a in listen if a.rsplit(":", 1)[0] in ("0.0.0.0", "[::]")]
    judge("sshd-09", bool(listen) and not wild, f"sshd listens on {listen}, expected named addresses only")


def test_sshd_14_host_keys(judge, sshd_out):
    keys = set(_every(sshd_out, "hostkey"))
    want = {f"/etc/ssh/ssh_host_{t}_key" for t in ("rsa", "ecdsa", "ed25519")}
    judge("sshd-14", keys == want, f"HostKey {sorted(keys)}, expected {sorted(want)}")


def test_sshd_47_no_distribution_in_the_version_banner(judge, root):
    """DebianBanner is not in `sshd -T`; what it changes is what every client is told
    first, so read that from the listening socket itself."""
    banner = root.check_output("timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/22; head -n 1 <&3'").strip()
    assert banner.startswith("SSH-2.0-OpenSSH_"), banner
    judge("sshd-47", re.fullmatch(r"SSH-2\.0-OpenSSH_\S+", banner) is not None, f"sshd says {banner!r}")


def test_sshd_48_strong_dh_moduli(judge, root):
    weak = root.check_output("awk '$5 < 2047 && $5 ~ /^[0-9]+$/ { print $5 }' /etc/ssh/moduli | sort -u")
    judge("sshd-48", weak == "", f"/etc/ssh/moduli has primes of {weak.split()} bits")


def test_sshd_49_no_crypto_policy_on_the_command_line(judge, root):
    daemons = [a for a in root.check_output("ps -eo args=").splitlines() if re.search(r"sshd\b.* -D\b", a)]
    if not daemons:
        pytest.skip("sshd-49: no sshd -D running (socket activation has not started one)")
    flags = [a for a in daemons if re.search(r"-o\s*(Ciphers|KexAlgorithms|HostKeyAlgorithms)", a)]
    judge("sshd-49", len(daemons) == 1 and not flags, f"sshd processes: {daemons}")


def test_sshd_50_rsa_host_key_size(judge, root):
    if root.run("test -r /etc/ssh/ssh_host_rsa_key").rc != 0:
        pytest.skip("sshd-50: no RSA host key")
    bits = int(root.check_output("ssh-keygen -l -f /etc/ssh/ssh_host_rsa_key").split()[0])
    judge("sshd-50", bits >= 4096, f"the RSA host key has {bits} bits, expected at least 4096")


def test_ssh_01_client_config(judge, host):
    exists, user, group, mode = _mode(host, "/etc/ssh/ssh_config")
    ok = exists and (user, group) == ("root", "root") and mode & 0o133 == 0 and mode & 0o644 == 0o644
    judge("ssh-01", ok, f"/etc/ssh/ssh_config is {user}:{group} {mode:o}, expected root:root 0644")
