"""dev-sec ssh-baseline held without a host: the rendered drop-ins read by the real sshd
(-T) and the real ssh client (-G) on top of the distribution's own main configs, judged
by the role suite's own control table; and the waivers file, its checks and its errors."""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import _pytest.outcomes
import pytest

from agentctl import baseline, hardening
from agentctl.errors import ConfigError
from agentctl.lab import verify as lab_verify
from agentctl.resources import ROLES
from tests import loopback

SSHD = "/usr/sbin/sshd"
SSH_DROPIN = "/etc/ssh/ssh_config.d/00-agentctl.conf"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/00-agentctl.conf"


def _suite(name: str):
    spec = importlib.util.spec_from_file_location(name, ROLES / "base" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SUITE = _suite("verify_ssh_baseline")
LINUX = _suite("verify_linux_baseline")
WAIVERS = baseline.load_waivers()


def _sshd_t(dropin: str, tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "sshd_config.d"
    folder.mkdir()
    (folder / "00-agentctl.conf").write_text(dropin)
    # Debian 12's sshd_config as shipped, with its Include aimed at our folder.
    main = tmp_path / "sshd_config"
    main.write_text(Path("/etc/ssh/sshd_config").read_text().replace("/etc/ssh/sshd_config.d", str(folder)))
    key = tmp_path / "hostkey"
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    out = subprocess.run([SSHD, "-T", "-f", str(main), "-h", str(key), *hardening.SSHD_T.split()[2:]],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return hardening.parse_sshd_effective(out.stdout)


def _ssh_g(dropin: str, tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "ssh_config.d"
    folder.mkdir()
    (folder / "00-agentctl.conf").write_text(dropin)
    main = tmp_path / "ssh_config"  # Debian's: the Include first, then Host * with GSSAPIAuthentication yes
    main.write_text(Path("/etc/ssh/ssh_config").read_text().replace("/etc/ssh/ssh_config.d", str(folder)))
    assert "GSSAPIAuthentication yes" in main.read_text()
    out = subprocess.run(["ssh", "-G", "-F", str(main), "baseline.invalid"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return hardening.parse_sshd_effective(out.stdout)


def _held(table, effective, role):
    """control -> passes?, for the controls of `table` not waived for `role`; and the
    waived ones that pass (stale waivers)."""
    failing, stale = {}, []
    for control, (keyword, accepted) in table.items():
        ok, detail = SUITE.keyword_holds(effective, keyword, accepted)
        if baseline.waived(WAIVERS, control, role):
            stale += [control] if ok else []
        elif not ok:
            failing[control] = detail
    return failing, stale


@pytest.mark.parametrize("stack,name,role", [("lab", "scout", "agent"), ("lab", "proxy", "proxy"),
                                             ("example-aws", "proxy", "proxy")])
def test_rendered_sshd_meets_ssh_baseline(hosts, stack, name, role, tmp_path):
    effective = _sshd_t(hosts[stack, name].file(SSHD_DROPIN), tmp_path)
    assert _held(SUITE.SERVER, effective, role) == ({}, [])


@pytest.mark.parametrize("stack,name,role", [("lab", "scout", "agent"), ("lab", "proxy", "proxy")])
def test_rendered_ssh_client_meets_ssh_baseline(hosts, stack, name, role, tmp_path):
    effective = _ssh_g(hosts[stack, name].file(SSH_DROPIN), tmp_path)
    assert _held(SUITE.CLIENT, effective, role) == ({}, [])


def test_without_the_drop_ins_debian_fails_the_baseline(tmp_path):
    """The check is not empty: Debian's defaults fail what the drop-ins fix."""
    (tmp_path / "s").mkdir()
    (tmp_path / "c").mkdir()
    server, _ = _held(SUITE.SERVER, _sshd_t("", tmp_path / "s"), "agent")
    client, _ = _held(SUITE.CLIENT, _ssh_g("", tmp_path / "c"), "agent")
    assert {"sshd-19", "sshd-24", "sshd-27", "sshd-31"} <= set(server), server
    assert {"ssh-06", "ssh-16", "ssh-17"} <= set(client), client


def test_a_broken_control_fails_a_waived_one_is_skipped_a_stale_waiver_fails():
    with pytest.raises(AssertionError, match="sshd-19: maxauthtries"):
        baseline.verdict(WAIVERS, "agent", "sshd-19", False, "maxauthtries is '6'")
    with pytest.raises(_pytest.outcomes.Skipped, match="sshd-09 waived: sshd listens on every address"):
        baseline.verdict(WAIVERS, "agent", "sshd-09", False, "wildcard")
    with pytest.raises(_pytest.outcomes.Failed, match="sshd-09 passes: its waiver in baseline-waivers.yaml is stale"):
        baseline.verdict(WAIVERS, "agent", "sshd-09", True, "")
    # a waiver covers the roles it names only
    with pytest.raises(AssertionError, match="sshd-39"):
        baseline.verdict(WAIVERS, "agent", "sshd-39", False, "allowtcpforwarding is 'local'")
    baseline.verdict(WAIVERS, "agent", "sshd-39", True, "")


def test_every_waiver_is_for_a_control_the_suites_judge():
    """A waiver for a control no test looks at would hide nothing and mislead a reader."""
    source = "".join((ROLES / "base" / f"{name}.py").read_text()
                     for name in ("verify_ssh_baseline", "verify_linux_baseline"))
    judged = {*SUITE.SERVER, *SUITE.CLIENT, *LINUX.SYSCTL} | {c for c in WAIVERS if f'"{c}"' in source}
    assert set(WAIVERS) <= judged, set(WAIVERS) - judged


@pytest.mark.parametrize("text,words", [
    ("sshd-09:\n  reason: a reason long enough to read\nsshd-09:\n  reason: again, long enough to read\n",
     "sshd-09: is waived twice; expected one entry per control"),
    ("sshd-9:\n  reason: a reason long enough to read\n", "sshd-9: is not a dev-sec control id"),
    ("sshd-09:\n  reason: short\n", "sshd-09.reason: string should have at least 20 characters"),
    ("sshd-09:\n  roles: [bastion]\n  reason: a reason long enough to read\n", "sshd-09.roles.0: input should be"),
    ("sshd-09:\n  role: [proxy]\n  reason: a reason long enough to read\n", "sshd-09.role: extra inputs are not permitted"),
    ("sshd-09:\n  roles: []\n  reason: a reason long enough to read\n", "sshd-09.roles: tuple should have at least 1 item"),
    ("- sshd-09\n", "is not a mapping"),
    ("sshd-09: [\n", "is not valid YAML"),
])
def test_a_bad_waivers_file_is_one_line(tmp_path, text, words):
    path = tmp_path / "baseline-waivers.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        baseline.load_waivers(path)
    line = str(exc.value)
    assert line.startswith(f"{path}: ") and words in line and "\n" not in line, line


def test_verify_prints_the_waivers_it_applies():
    lines = baseline.report(WAIVERS, {"agent"})
    assert any(line.startswith("sshd-09 (proxy, agent): sshd listens on every address") for line in lines)
    assert not any(line.startswith("sshd-39") for line in lines)  # the proxy's alone
    assert any(line.startswith("sshd-39 (proxy):") for line in baseline.report(WAIVERS, {"proxy"}))


ALGORITHMS = ("KexAlgorithms", "Ciphers", "MACs", "HostKeyAlgorithms")


def _ssh_audit(tmp_path: Path, config: str) -> tuple[str, bool]:
    """The real ssh-audit (the pinned release) against a real sshd on loopback with an
    ed25519 and a 3072-bit RSA host key, like the hosts', judged as `lab verify --score`
    judges it."""
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "3072", "-N", "", "-f", str(tmp_path / "rsa")], check=True)
    port, proc = loopback.start_sshd(tmp_path, "", f"HostKey {tmp_path / 'rsa'}\n{config}")
    try:
        out = subprocess.run([*lab_verify.SSH_AUDIT, "--no-colors", "-p", str(port), "127.0.0.1"],
                             capture_output=True, text=True, timeout=120)
    finally:
        proc.terminate()
        proc.wait()
    return lab_verify.judge_audit(out.stdout, out.stderr)


def test_ssh_audit_finds_only_the_classic_kex_warnings_on_the_rendered_algorithms(hosts, tmp_path):
    dropin = hosts["lab", "scout"].file(SSHD_DROPIN)
    lines = "".join(line + "\n" for line in dropin.splitlines() if line.split(" ")[0] in ALGORITHMS)
    assert lines.count("\n") == len(ALGORITHMS), dropin
    note, ok = _ssh_audit(tmp_path, lines)
    assert ok, note
    assert note.startswith("0 fail, 2 warn") and "curve25519-sha256@libssh.org" in note, note


def test_ssh_audit_fails_openssh_defaults_and_a_non_classic_warning(tmp_path):
    """The judgement is not empty: OpenSSH's own defaults (ECDSA, SHA-1 MACs, small
    groups) fail it, and a warning other than the classic-kex one is not accepted."""
    note, ok = _ssh_audit(tmp_path, "")
    assert not ok and not note.startswith("0 fail, 0 warn"), note
    assert lab_verify.audit_accepted(
        "(kex) curve25519-sha256@libssh.org          -- [warn] does not provide protection against post-quantum attacks")
    assert not lab_verify.audit_accepted(
        "(key) ecdsa-sha2-nistp256                   -- [warn] using weak random number generator could reveal the key")
    assert not lab_verify.audit_accepted(
        "(kex) ecdh-sha2-nistp256                    -- [warn] does not provide protection against post-quantum attacks")


# Kernel defaults dev-sec accepts as they are, which the hosts therefore leave alone.
KERNEL_DEFAULTS = {"net.ipv4.conf.all.shared_media": "1", "net.ipv4.conf.default.shared_media": "1",
                   "kernel.modules_disabled": "0"}


def _sysctl_files(host) -> dict[str, str]:
    """What the rendered sysctl.d files set, with `*` (all, default and every
    interface) expanded to the all/default keys the baseline reads."""
    values = {}
    for path in ("/etc/sysctl.d/90-agentctl-net.conf", "/etc/sysctl.d/91-agentctl-kernel.conf"):
        for line in host.file(path).splitlines():
            if " = " in line and not line.startswith("#"):
                key, value = line.split(" = ")
                for iface in ("all", "default") if ".*." in key else ("",):
                    values[key.replace(".*.", f".{iface}.") if iface else key] = value
    return values


@pytest.mark.parametrize("stack,name", [("lab", "scout"), ("lab", "proxy"), ("example-aws", "proxy")])
def test_rendered_sysctls_meet_linux_baseline(hosts, stack, name):
    """Every sysctl control of linux-baseline not waived holds in what the hosts write
    (the role suite judges the running values; this catches a template change first)."""
    values = {**KERNEL_DEFAULTS, **_sysctl_files(hosts[stack, name])}
    wrong = {control: [(key, values.get(key)) for key, accepted in keys if values.get(key) not in accepted]
             for control, keys in LINUX.SYSCTL.items() if not baseline.waived(WAIVERS, control, "agent")}
    assert {c: w for c, w in wrong.items() if w} == {}


def test_login_defs_meet_linux_baseline_but_the_waived_aging():
    have = {**hardening.LOGIN_DEFS}
    wrong = {key for key, (how, want) in LINUX.LOGIN_DEFS.items()
             if key in have and not (want in have[key] if how == "in" else have[key] == want)}
    assert wrong == {"PASS_MAX_DAYS", "PASS_MIN_DAYS"} and baseline.waived(WAIVERS, "os-05", "agent")
