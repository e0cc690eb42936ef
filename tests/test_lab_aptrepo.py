"""The lab's apt mirror, read by this machine's real apt (private lists and cache, a
file: URL): its InRelease verifies against its key, its indexes against InRelease, and
each suite says of itself what the distro's archive does (what unattended-upgrades'
Origins-Pattern selects on). tests/test_lab_unattended_upgrades.py uses it on lab hosts."""
import re
import shutil
import subprocess

import pytest

from agentctl.lab import aptrepo

pytestmark = pytest.mark.skipif(not (shutil.which("apt-get") and shutil.which("gpg")), reason="needs apt and gpg")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return aptrepo.build(tmp_path_factory.mktemp("apt") / "repo", "debian-12")


def _apt(tmp, repo, *args, key=None):
    lists, cache = tmp / "lists", tmp / "cache"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    (cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = tmp / "sources.list"
    sources.write_text(aptrepo.sources_line("debian-12", f"file:{repo}").replace(
        "/etc/apt/keyrings/agentctl-lab.gpg", str(key or aptrepo.keyring(repo))))
    opts = [f"-o=Dir::Etc::sourcelist={sources}", "-o=Dir::Etc::sourceparts=-", f"-o=Dir::State::Lists={lists}",
            f"-o=Dir::Cache={cache}", "-o=Debug::NoLocking=1",
            "-o=APT::Sandbox::User=root"]  # pytest's folders are 0700: _apt could not read them
    return subprocess.run([args[0], *opts, *args[1:]], capture_output=True, text=True, timeout=120)


def test_apt_reads_both_suites_and_their_origins(repo, tmp_path):
    update = _apt(tmp_path, repo, "apt-get", "update")
    assert update.returncode == 0 and "Err:" not in update.stdout and "W:" not in update.stderr, update.stderr
    policy = _apt(tmp_path, repo, "apt-cache", "policy").stdout
    # apt's own reading of each Release: o=Origin, a=Suite, n=Codename, l=Label
    assert re.search(r"o=Debian,a=stable-security,n=bookworm-security,l=Debian-Security,c=main", policy), policy
    assert re.search(r"o=Debian,a=stable,n=bookworm,l=Debian,c=main", policy), policy
    fix = _apt(tmp_path, repo, "apt-cache", "policy", aptrepo.FIX).stdout
    assert f"Candidate: {aptrepo.NEW}" in fix and f" {aptrepo.OLD} 500" in fix, fix


def test_a_mirror_signed_by_another_key_is_refused(repo, tmp_path):
    other = aptrepo.build(tmp_path / "other", "debian-12")
    update = _apt(tmp_path, repo, "apt-get", "update", key=aptrepo.keyring(other))
    assert "NO_PUBKEY" in update.stderr or "not signed" in update.stderr, update.stderr


def test_an_index_changed_after_signing_is_refused(repo, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(repo, tampered)
    packages = tampered / "dists" / "bookworm-security" / "main" / "binary-amd64" / "Packages"
    packages.write_text(packages.read_text().replace("Version: 1.1", "Version: 9.9"))
    update = _apt(tmp_path, tampered, "apt-get", "update")
    assert "Hash Sum mismatch" in update.stdout + update.stderr, update.stdout + update.stderr


def test_only_the_fix_asks_for_a_reboot(repo, tmp_path):
    for deb in sorted((repo / "pool").glob("*.deb")):
        out = tmp_path / deb.stem
        subprocess.run(["dpkg-deb", "--control", str(deb), str(out)], check=True)
        asks = (out / "postinst").exists() and "/var/run/reboot-required" in (out / "postinst").read_text()
        assert asks == (deb.name == f"{aptrepo.FIX}_{aptrepo.NEW}_all.deb"), deb.name
