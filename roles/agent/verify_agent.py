"""What a converged agent host must show beyond the base: its only way out is the
proxy, it trusts the proxy's CA, and the agent runs sandboxed as agentuser."""
from __future__ import annotations

import shlex
import uuid

import pytest
import yaml

from agentctl import hermes
from agentctl.render import (AGENT_APPARMOR_PROFILE, BACKUP_DIR, BACKUP_MARKER, HERMES_CONFIG, HERMES_HOME, HERMES_INSTALL, SNAPSHOT_REPO,
                             SNAPSHOT_WORKTREE)

SERVICE = "agentctl-agent.service"


@pytest.fixture(scope="module")
def agent(deployment, host_name):
    return next(a for a in deployment.agents if a.name == host_name)


@pytest.fixture(scope="module")
def unit(root) -> dict[str, str]:
    props = ("User NoNewPrivileges ProtectSystem PrivateTmp PrivateDevices CapabilityBoundingSet AmbientCapabilities "
             "SystemCallFilter IPAddressDeny IPAddressAllow RestrictNamespaces Environment ActiveState "
             "ReadOnlyPaths ReadWritePaths Restart KillMode KillSignal TimeoutStopUSec RestartForceExitStatus "
             "RestartPreventExitStatus").split()
    out = root.check_output(f"systemctl show {SERVICE} " + " ".join(f"-p {p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines())


def test_agent_service_running(host):
    assert host.service(SERVICE).is_running and host.service(SERVICE).is_enabled


def test_agent_runs_as_agentuser(unit, host):
    assert unit["User"] == "agentuser"
    pid = host.check_output(f"systemctl show -p MainPID --value {SERVICE}")
    assert host.check_output(f"ps -o user= -p {pid}").strip() == "agentuser"


@pytest.mark.parametrize("key,value", [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                                       ("PrivateDevices", "yes"), ("CapabilityBoundingSet", ""),
                                       ("AmbientCapabilities", ""), ("RestrictNamespaces", "yes")])
def test_agent_sandbox_property(unit, key, value):
    assert unit[key] == value


def test_agent_ip_fence(unit, deployment):
    assert "0.0.0.0/0" in unit["IPAddressDeny"] and "::/0" in unit["IPAddressDeny"]
    assert f"{deployment.proxy_ip}/32" in unit["IPAddressAllow"].split()


def test_agent_syscall_filter(unit):
    # systemd expands @system-service into its syscall names; a few it must contain/omit.
    allowed = unit["SystemCallFilter"].split()
    assert "read" in allowed and "mount" not in allowed and "reboot" not in allowed


def test_agent_environment_points_at_the_proxy(unit, deployment):
    env = dict(item.split("=", 1) for item in unit["Environment"].split())
    assert env["HTTPS_PROXY"] == f"http://{deployment.proxy_ip}:{deployment.proxy.listen.tunnel}"
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == "/etc/ssl/certs/ca-certificates.crt"
    assert env["NODE_EXTRA_CA_CERTS"].endswith("agentctl-proxy-ca.crt")
    assert not [k for k in env if any(w in k.upper() for w in ("TOKEN", "SECRET", "PASSWORD", "API_KEY"))]


CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def test_the_proxy_ca_is_the_only_ca_the_host_trusts(host):
    """Every TLS connection goes through the proxy, which re-signs it: its CA is trusted,
    and no public CA is, in the bundle or in OpenSSL's folder (a connection that got past
    the proxy would fail verification)."""
    assert host.run(f"openssl verify -CAfile {CA_BUNDLE} /etc/agentctl/proxy-ca.crt").rc == 0
    assert host.file("/usr/local/share/ca-certificates/agentctl-proxy-ca.crt").exists
    assert host.file(CA_BUNDLE).content_string.count("BEGIN CERTIFICATE") == 1
    public = host.check_output("ls /usr/share/ca-certificates/mozilla/*.crt | head -n 1")
    refused = host.run(f"openssl verify -CAfile {CA_BUNDLE} -CApath /etc/ssl/certs {public}")
    assert public and refused.rc != 0 and "self-signed certificate" in refused.stdout + refused.stderr, \
        refused.stdout + refused.stderr
    assert host.check_output("find /etc/ssl/certs -type l -lname '/usr/share/ca-certificates/*'") == ""


@pytest.mark.destructive
def test_a_ca_certificates_upgrade_keeps_the_proxy_ca_the_only_one(root):
    """What dpkg runs when ca-certificates is upgraded (its config script under the debconf
    frontend, then postinst configure), with a CA the new version adds: it stays out."""
    name = "mozilla/agentctl-probe-new-ca.crt"
    new = f"/usr/share/ca-certificates/{name}"
    root.check_output(f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null "
                      f"-subj /CN=agentctl-probe-new-ca -days 2 -out {new} 2>/dev/null")
    try:
        version = root.check_output("dpkg-query -W -f '${Version}' ca-certificates")
        for script in ("config", "postinst"):
            root.check_output(f"DEBIAN_FRONTEND=noninteractive DPKG_MAINTSCRIPT_PACKAGE=ca-certificates "
                              f"DPKG_MAINTSCRIPT_NAME={script} /usr/share/debconf/frontend "
                              f"/var/lib/dpkg/info/ca-certificates.{script} configure {version} >/dev/null 2>&1")
        conf = root.file("/etc/ca-certificates.conf").content_string.splitlines()
        assert f"!{name}" in conf and not [c for c in conf if c and not c.startswith(("#", "!"))], conf
        assert root.file(CA_BUNDLE).content_string.count("BEGIN CERTIFICATE") == 1
    finally:
        root.run(f"rm -f {new}; sed -i '\\|^!{name}$|d' /etc/ca-certificates.conf; "
                 "dpkg --triggers-only --pending; update-ca-certificates >/dev/null")


def test_dns_points_at_the_proxy(host, deployment):
    resolv = host.file("/etc/resolv.conf").content_string
    servers = [l.split()[1] for l in resolv.splitlines() if l.startswith("nameserver")]
    assert servers in ([deployment.proxy_ip], ["127.0.0.53"])
    if servers == ["127.0.0.53"]:
        assert f"DNS={deployment.proxy_ip}" in host.file("/etc/systemd/resolved.conf.d/agentctl.conf").content_string


def test_apt_goes_through_the_proxy(host, deployment):
    assert f'Acquire::http::Proxy "http://{deployment.proxy_ip}:{deployment.proxy.listen.tunnel}";' \
        in host.check_output("apt-config dump")


def test_time_source_is_the_proxy_only(host, deployment):
    conf = host.file("/etc/chrony/chrony.conf").content_string
    assert [l.split()[1] for l in conf.splitlines() if l.startswith(("server", "pool"))] == [deployment.proxy_ip]


def test_time_syncs_from_the_proxy(host, deployment, in_container):
    if in_container:
        pytest.skip("chronyd needs CAP_SYS_TIME, which a container never gets: the clock is the machine's")
    assert deployment.proxy_ip in host.check_output("chronyc -n sources")


def test_agent_holds_no_proxy_secrets(host):
    assert not host.file("/etc/agentctl-proxy").exists


# --- AppArmor: the kernel's own access control around the agent ---------------------

@pytest.fixture(scope="module")
def apparmor(root, own_kernel):
    own_kernel("AppArmor")
    assert root.run("aa-enabled --quiet").rc == 0, "AppArmor is off in this kernel: the agent runs unconfined"


def confined(root, command: str, user: str = "root"):
    """`command` (a shell line) in the agent's profile, as `user`, outside the unit's own
    sandbox: AppArmor alone stands between it and the host. aa-exec's own exec is not
    the profile's to judge, so the line runs in a confined sh."""
    as_user = "" if user == "root" else f"runuser -u {user} -- "
    # No input and a time limit: a program the profile failed to stop (su) must not hang here.
    return root.run(f"{as_user}timeout 60 aa-exec -p {AGENT_APPARMOR_PROFILE} -- sh -c {shlex.quote(command)} "
                    f"< /dev/null")


def test_agent_profile_is_loaded_and_enforced(root, apparmor):
    loaded = root.check_output("cat /sys/kernel/security/apparmor/profiles").splitlines()
    assert f"{AGENT_APPARMOR_PROFILE} (enforce)" in loaded


def test_every_agent_process_runs_in_the_profile(root, apparmor):
    cgroup = root.check_output(f"systemctl show -p ControlGroup --value {SERVICE}")
    out = root.check_output(f"for p in $(cat /sys/fs/cgroup{cgroup}/cgroup.procs); do "
                            f"echo \"$p $(tr -d '\\0' < /proc/$p/attr/current)\"; done")
    labels = dict(line.split(" ", 1) for line in out.splitlines())
    assert labels, f"no process in {cgroup}"
    assert set(labels.values()) == {f"{AGENT_APPARMOR_PROFILE} (enforce)"}, labels


UID0_DENIED = {  # what a process of the agent's that gained uid 0 cannot do; each works unconfined
    "read the password hashes": "cat /etc/shadow",
    "read sudo's rules": "cat /etc/sudoers",
    "read an SSH host key": "cat /etc/ssh/ssh_host_ed25519_key",
    "list root's home": "ls /root",
    "read an admin's keys": "cat /home/admin/.ssh/authorized_keys",
    "write the system": "touch /etc/agentctl-apparmor-probe && rm /etc/agentctl-apparmor-probe",
    "write its guardrails": f": >> {HERMES_CONFIG}",
    "use a capability": "python3 -c 'import os; os.setuid(65534)'",
    "open a packet socket": "python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)'",
    "open a raw IP socket": "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)'",
}


@pytest.mark.parametrize("what", UID0_DENIED)
def test_uid0_in_the_agent_profile_cannot(root, apparmor, what):
    command = UID0_DENIED[what]
    assert root.run(command).rc == 0, f"the control failed: {command!r} does not work unconfined either"
    denied = confined(root, command)
    assert denied.rc != 0, f"{what}: allowed in {AGENT_APPARMOR_PROFILE}"
    assert ("Permission denied" in denied.stderr or "Operation not permitted" in denied.stderr), denied.stderr


@pytest.mark.parametrize("program", ["sudo -n true", "su -c true", "unshare -r true", "nsenter -t 1 -m true"])
def test_agent_profile_runs_no_program_that_changes_who_it_is(root, apparmor, program):
    denied = confined(root, program, user="agentuser")
    assert denied.rc != 0 and f"{program.split()[0]}: Permission denied" in denied.stderr, denied.stderr


def test_agent_profile_lets_the_agent_work(root, apparmor):
    """Its folders writable, its tools runnable: the profile is not a wall around nothing."""
    work = confined(root, "cd /home/agentuser && echo ok > .apparmor-probe && cat .apparmor-probe && "
                          "rm .apparmor-probe && python3 -c 'import ssl, sqlite3; print(2)' && git --version "
                          "&& ls / >/dev/null && rm \"$(mktemp -p /tmp)\"", user="agentuser")
    assert work.rc == 0, work.stderr
    assert work.stdout.startswith("ok\n2\ngit version")


# --- the agent's guardrails are root's ----------------------------------------------

def test_agent_config_is_roots_and_only_readable_by_the_agent(root):
    f = root.file(HERMES_CONFIG)  # through sudo: admin may not enter the agent's folder
    assert (f.user, f.group, f.mode) == ("root", "agentuser", 0o640)
    home = root.file(HERMES_HOME)
    assert (home.user, home.group, home.mode) == ("root", "agentuser", 0o1770)  # sticky: no rename of root's files


def test_agent_config_holds_the_guardrails(root, agent):
    config = yaml.safe_load(root.file(HERMES_CONFIG).content_string)
    assert config["approvals"]["mode"] == "manual"
    if agent.runtime.hermes:
        # Hermes' gateway never reads checkpoints.enabled (docs/hermes.md, "Checkpoints"):
        # a config promising it would be a guardrail with no effect
        assert not (config.get("checkpoints") or {}).get("enabled"), \
            "checkpoints.enabled promises rollback that hermes gateway never delivers"
    else:
        assert config["checkpoints"]["enabled"] is True


# --- Hermes: the runtime as rendered ------------------------------------------------

@pytest.fixture(scope="module")
def hermes_pin(agent):
    if not agent.runtime.hermes:
        pytest.skip("a generic command agent, not Hermes")
    return agent.runtime.hermes


def test_hermes_is_the_pinned_version_with_its_extras(root, hermes_pin):
    python = f"{hermes.VENV}/bin/python"
    version = root.check_output(f"{python} -c 'import importlib.metadata as m; print(m.version(\"hermes-agent\"))'")
    assert version == hermes_pin.version
    # the provider SDK and the chat platform's: otherwise Hermes installs them at run time
    assert root.run(f"{python} -c 'import anthropic, telegram'").rc == 0


def test_hermes_config_is_as_rendered(root, hermes_pin):
    want = hermes.config(hermes_pin)
    for path in (HERMES_CONFIG, f"{hermes.MANAGED_DIR}/config.yaml"):
        assert yaml.safe_load(root.file(path).content_string) == want, path
    env = root.file(f"{hermes.MANAGED_DIR}/.env").content_string
    assert dict(l.split("=", 1) for l in env.splitlines() if l and not l.startswith("#")) == \
        hermes.managed_env(hermes_pin)
    for name, content in hermes.ROOT_FILES.items():
        assert root.file(f"{HERMES_HOME}/{name}").content_string == content, name


def test_hermes_guardrails_are_roots_and_not_writable_by_agentuser(root, hermes_pin):
    files = [HERMES_CONFIG, f"{hermes.MANAGED_DIR}/config.yaml", f"{hermes.MANAGED_DIR}/.env",
             *(f"{HERMES_HOME}/{n}" for n in hermes.ROOT_FILES)]
    dirs = [hermes.MANAGED_DIR, *(f"{HERMES_HOME}/{d}" for d in hermes.ROOT_DIRS)]
    for path in files + dirs:
        f = root.file(path)
        assert f.exists and not f.is_symlink and f.user == "root" and not f.mode & 0o022, path
    for path in files:
        assert root.run(f"runuser -u agentuser -- sh -c 'echo HERMES_YOLO_MODE=1 >> {path}'").rc != 0, path
        assert root.run(f"runuser -u agentuser -- mv {path} {path}.moved").rc != 0, path
    for path in dirs:
        assert root.run(f"runuser -u agentuser -- mkdir {path}/agentctl-probe").rc != 0, path


def test_hermes_unit_restarts_and_stops_as_hermes_expects(unit, hermes_pin):
    assert unit["Restart"] == "always" and unit["KillMode"] == "mixed" and unit["KillSignal"] == "2"  # SIGINT
    assert "75" in unit["RestartForceExitStatus"].split() and "78" in unit["RestartPreventExitStatus"].split()
    assert unit["TimeoutStopUSec"] == "1min 30s"  # >= 60 s, as Hermes' own unit
    env = dict(item.split("=", 1) for item in unit["Environment"].split())
    assert env["HERMES_MANAGED_DIR"] == hermes.MANAGED_DIR and env["HERMES_HOME"] == HERMES_HOME
    for path in hermes.ROOT_FILES:
        assert f"{HERMES_HOME}/{path}" in unit["ReadOnlyPaths"].split()


@pytest.mark.destructive
def test_hermes_stops_clean_and_comes_back(root, hermes_pin):
    """`systemctl stop` sends SIGINT: Hermes' planned stop, exit 0, so the unit ends
    inactive, not failed (with SIGTERM it exits 1)."""
    try:
        root.check_output(f"systemctl stop {SERVICE}")
        # one property per call: `--value` prints several in systemd's order, not ours
        state = [root.check_output(f"systemctl show -p {p} --value {SERVICE}") for p in ("ActiveState", "Result")]
        assert state == ["inactive", "success"], state
    finally:
        root.run(f"systemctl start {SERVICE}")
    assert root.run(f"systemctl is-active --quiet {SERVICE}").rc == 0


# --- checkpoints: file edits can be rolled back ---------------------------------------

def test_file_edits_can_be_rolled_back(host, root):
    """The checkpoints promise, delivered by agentctl-snapshot (Hermes' own checkpoints do
    nothing under its gateway): the timer runs and the history is root's alone."""
    timer = host.service("agentctl-snapshot.timer")
    assert timer.is_enabled and timer.is_running, "no snapshots: file edits cannot be rolled back"
    repo = root.file(SNAPSHOT_REPO)
    if repo.exists:
        assert repo.user == "root" and not repo.mode & 0o077


@pytest.mark.destructive
def test_an_edit_is_rolled_back_from_a_snapshot(root):
    probe = f"{SNAPSHOT_WORKTREE}/agentctl-rollback-probe.txt"
    # Content of this run only: an earlier run's snapshot may hold the probe already, and
    # a take that finds nothing new makes no snapshot.
    before = f"before {uuid.uuid4().hex}"
    root.check_output(f"runuser -u agentuser -- sh -c 'echo {before} > {probe}'")
    try:
        snap = root.check_output("/usr/local/sbin/agentctl-snapshot take").split()[-1]
        root.check_output(f"runuser -u agentuser -- sh -c 'echo after > {probe}'")
        root.check_output(f"/usr/local/sbin/agentctl-snapshot restore {snap} {probe.rsplit('/', 1)[1]}")
        assert root.file(probe).content_string == f"{before}\n" and root.file(probe).user == "agentuser"
    finally:
        root.run(f"rm -f {probe}")


def test_agent_unit_reads_its_config_read_only(unit):
    env = dict(item.split("=", 1) for item in unit["Environment"].split())
    assert env["HERMES_HOME"] == HERMES_HOME
    assert HERMES_CONFIG in unit["ReadOnlyPaths"].split()


@pytest.mark.parametrize("attempt", [
    f"sh -c 'echo approvals: {{mode: off}} >> {HERMES_CONFIG}'",
    f"sh -c 'echo x > {HERMES_CONFIG}.new && mv -f {HERMES_CONFIG}.new {HERMES_CONFIG}'",
    f"mv {HERMES_CONFIG} {HERMES_HOME}/moved.yaml",
    f"rm -f {HERMES_CONFIG}",
    f"chmod 0666 {HERMES_CONFIG}",
    f"mv {HERMES_HOME} {HERMES_HOME}.moved",
])
def test_agentuser_cannot_change_its_config(root, attempt):
    before = root.check_output(f"sha256sum {HERMES_CONFIG}")
    try:
        assert root.run(f"runuser -u agentuser -- {attempt}").rc != 0
    finally:  # if an attempt got through, put the files back where they were
        root.run(f"[ -e {HERMES_HOME}.moved ] && mv {HERMES_HOME}.moved {HERMES_HOME}; "
                 f"[ -e {HERMES_HOME}/moved.yaml ] && mv {HERMES_HOME}/moved.yaml {HERMES_CONFIG}; "
                 f"rm -f {HERMES_CONFIG}.new")
    assert root.check_output(f"sha256sum {HERMES_CONFIG}") == before


def test_agent_process_cannot_write_its_config(root):
    """From inside the running service (its mount namespace) the file is a read-only
    bind mount: not even root there can write it, so permissions are not the only wall."""
    pid = root.check_output(f"systemctl show -p MainPID --value {SERVICE}")
    result = root.run(f"nsenter -t {pid} -m -- runuser -u agentuser -- sh -c ': >> {HERMES_CONFIG}'")
    assert result.rc != 0
    assert root.run(f"nsenter -t {pid} -m -- sh -c ': >> {HERMES_CONFIG}'").rc != 0, "not mounted read-only"


def test_agent_code_is_roots(root, agent):
    if not agent.runtime.hermes:
        pytest.skip("a generic command agent: its code is wherever the operator installed it")
    assert root.check_output(f"find {HERMES_INSTALL} ! -user root | head -n 1") == ""
    assert root.run(f"runuser -u agentuser -- touch {HERMES_INSTALL}/venv/bin/probe").rc != 0


def test_backups_timer_matches_the_stack(host, agent):
    timer = host.service("agentctl-backup.timer")
    if not agent.backups.enabled:
        assert not host.file("/etc/systemd/system/agentctl-backup.timer").exists
        pytest.skip("backups are off for this agent in the stack")
    assert timer.is_enabled and timer.is_running


def wait_until_idle(root, unit: str, seconds: int) -> None:
    """Until a oneshot `unit` (which its timer may have started) is no longer running."""
    root.check_output(f"for i in $(seq {seconds}); do [ \"$(systemctl show -p ActiveState --value {unit})\" "
                      f"!= activating ] && exit 0; sleep 1; done; exit 1")


@pytest.mark.destructive
def test_backup_keeps_the_state_and_leaves_out_credentials(root, agent):
    """A real backup run: the agent's files are in the archive, its .env is not, and
    the marker the watchdog reads moved."""
    if not agent.backups.enabled:
        pytest.skip("backups are off for this agent in the stack")
    probe, secret = "agentctl-backup-probe.txt", ".env"
    # A run the timer started (15-25 min after boot) would take our start as its own and
    # finish without the probe: let it end first. Any run that starts later sees the probe.
    wait_until_idle(root, "agentctl-backup.service", 600)
    root.check_output(f"runuser -u agentuser -- sh -c 'echo probe > ~/{probe} && echo TOKEN=probe > ~/{secret}'")
    try:
        before = root.run(f"stat -c %Y {BACKUP_MARKER}").stdout.strip()
        root.check_output("sleep 1.1; systemctl start agentctl-backup.service")  # oneshot: returns when done
        newest = root.check_output(f"ls -1t {BACKUP_DIR}/agentctl-*.tar.zst | head -n 1")
        members = root.check_output(f"zstd -dcq {newest} | tar -t").splitlines()
        assert f"home/agentuser/{probe}" in members
        assert not [m for m in members if m.rsplit("/", 1)[-1] == secret], "a credentials file was backed up"
        assert root.check_output(f"stat -c %Y {BACKUP_MARKER}").strip() != before
        assert root.file(newest).user == "root" and root.file(newest).mode == 0o600
    finally:
        root.run(f"rm -f /home/agentuser/{probe} /home/agentuser/{secret}")


def test_agentuser_cannot_use_sudo(host):
    assert host.run("sudo -n -u agentuser sudo -n true").rc != 0


@pytest.mark.destructive
def test_watchdog_restarts_a_stopped_agent(root, deployment):
    """Stop the agent, run the watchdog as often as its threshold says; it must be back."""
    # The timer's own runs (every 2 min) would add to the count mid-test and restart the
    # agent a check early: it pauses, and a run it already started ends, before the reset.
    root.check_output("systemctl stop agentctl-watchdog.timer")
    wait_until_idle(root, "agentctl-watchdog.service", 60)
    root.check_output(f"systemctl stop {SERVICE}; install -d /var/lib/agentctl-watchdog; "
                      f"echo 0 > /var/lib/agentctl-watchdog/failures")
    try:
        for i in range(deployment.watchdog.failure_threshold):
            assert root.run(f"systemctl is-active --quiet {SERVICE}").rc != 0, f"restarted early, after {i} checks"
            root.check_output("systemctl start agentctl-watchdog.service")
        assert root.run(f"for i in $(seq 20); do systemctl is-active --quiet {SERVICE} && exit 0; sleep 0.5; done; "
                        f"exit 1").rc == 0
    finally:
        root.run(f"systemctl start {SERVICE}; systemctl start agentctl-watchdog.timer")
