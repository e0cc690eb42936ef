"""unattended-upgrades on a booted lab host does with our config what it does on a real
one: from the lab's apt mirror (agentctl/lab/aptrepo.py, a signed repository whose suites
say what the distro's security and ordinary archives say), it installs the security fix,
leaves the ordinary update alone, and schedules the reboot the fix asks for at the stack's
maintenance time, not now. The agent's apt goes through the proxy (GET-only apt grant),
the proxy's directly. The real unattended-upgrade runs; nothing is stubbed."""
import base64
import json

import pytest

from agentctl.lab import aptrepo, hosts, internet, topology
from agentctl.stackfile import load
from tests.labrun import ROOT, UBUNTU_RELEASE, booted_lab, needs_lab, ubuntu_archive_answers

pytestmark = needs_lab
LIST = "/etc/apt/sources.list.d/agentctl-lab.list"
KEYRING = "/etc/apt/keyrings/agentctl-lab.gpg"
HOSTS_MARK = "# agentctl-test-mirror"
ONLY_OURS = f"-o Dir::Etc::sourcelist={LIST} -o Dir::Etc::sourceparts=-"  # the image's own archive is unreachable


@pytest.fixture(scope="module", params=["debian-12", "ubuntu-24.04"])
def lab(request, tmp_path_factory):
    if request.param == "ubuntu-24.04" and not ubuntu_archive_answers():
        pytest.skip(f"{UBUNTU_RELEASE} does not answer (the Ubuntu image is built from it)")
    booted = booted_lab(tmp_path_factory.mktemp("labstate-upgrades"), "--distro", request.param)
    yield {**next(booted), "distro": request.param}
    next(booted, None)  # lab down


def _root(ns: str, script: str, *, input: str | None = None, timeout: float = 300):
    return hosts.run_in(ns, "bash", "-euo", "pipefail", "-c", script, input=input, timeout=timeout)


@pytest.fixture(params=["proxy", "scout"])
def host(request, lab):
    assert lab["up"].returncode == 0, lab["up"].stdout[-3000:]
    name = request.param
    ns = topology.host_netns(name)
    repo = internet.apt_repo_dir(lab["state_dir"])
    key = aptrepo.keyring(repo).read_bytes()
    _root(ns, f"install -d -m 0755 /etc/apt/keyrings && base64 -d > {KEYRING} && chmod 0644 {KEYRING}",
          input=base64.b64encode(key).decode())
    _root(ns, f"cat > {LIST}", input=aptrepo.sources_line(lab["distro"]))
    if name == "proxy":
        # a real proxy host resolves its mirror with the cloud's resolver; the lab has none
        # (the proxy's own DNS answers agents), so the name goes in /etc/hosts for the test
        _root(ns, f"echo '{mirror_ip(lab)} deb.lab.test {HOSTS_MARK}' >> /etc/hosts")
    yield ns
    _root(ns, f"shutdown -c 2>/dev/null || true; apt-get purge -y -q {aptrepo.FIX} {aptrepo.FEATURE} >/dev/null 2>&1 "
              f"|| true; rm -f {LIST} {KEYRING} /var/run/reboot-required /var/run/reboot-required.pkgs; "
              f"sed -i '/{HOSTS_MARK}$/d' /etc/hosts")


def mirror_ip(lab) -> str:
    d = load(ROOT, "lab")
    return next(r.value for r in d.proxy.dns_records if r.name == "deb.lab.test")


def _version(ns: str, package: str) -> str:
    return _root(ns, f"dpkg-query -W -f '${{Version}}' {package}").stdout.strip()


def test_a_security_fix_is_installed_and_its_reboot_waits_for_the_window(lab, host):
    d = load(ROOT, "lab")
    log = internet.request_log(lab["state_dir"])
    seen_before = len(log.read_text().splitlines())
    update = _root(host, f"apt-get update -q {ONLY_OURS}")
    assert update.returncode == 0 and "Err:" not in update.stdout, update.stdout + update.stderr
    pin = f"{aptrepo.FIX}={aptrepo.OLD} {aptrepo.FEATURE}={aptrepo.OLD}"
    old = _root(host, f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {pin}")
    assert old.returncode == 0, old.stdout[-2000:] + old.stderr
    assert _root(host, "test -e /var/run/reboot-required && echo yes || echo no").stdout.strip() == "no"

    run = _root(host, "unattended-upgrade -v", timeout=600)
    said = run.stdout + run.stderr
    assert run.returncode == 0, said[-3000:]
    assert _version(host, aptrepo.FIX) == aptrepo.NEW, said[-3000:]          # the security origin: upgraded
    assert _version(host, aptrepo.FEATURE) == aptrepo.OLD, said[-3000:]      # not a security origin: left
    assert _root(host, "cat /var/run/reboot-required.pkgs").stdout.split() == [aptrepo.FIX]

    # the reboot is scheduled (logind's record of `shutdown -r HH:MM`), at the window, not now
    scheduled = dict(line.split("=", 1) for line in
                     _root(host, "cat /run/systemd/shutdown/scheduled").stdout.split())
    assert scheduled.get("MODE") == "reboot", scheduled
    at = int(scheduled["USEC"]) // 1_000_000
    when = _root(host, f"date -d @{at} +%H:%M; date +%s").stdout.split()
    assert when[0] == d.maintenance.reboot_time, (when, scheduled)
    assert 0 < at - int(when[1]) <= 24 * 3600, (when, scheduled)
    assert hosts.leader(host)  # and the host is still up

    # what the mirror saw: the agent's requests arrive from the proxy (its apt grant), never
    # from the agent's own address
    seen = [json.loads(line) for line in log.read_text().splitlines()[seen_before:]]
    mirror = [r for r in seen if r.get("path", "").startswith("/debian/")]
    assert {r["status"] for r in mirror} == {200} and any(r["path"].endswith("InRelease") for r in mirror), mirror
    assert {r["client"].removeprefix("::ffff:") for r in mirror} == {d.proxy_ip}, mirror

