"""The lab's apt mirror (deb.lab.test, under /debian/): a signed repository with one
security fix and one ordinary update, so a lab host's real unattended-upgrades can show
what it does on a real host with our config: install the fix, schedule the reboot the fix
asks for in the maintenance window, and leave the ordinary update alone.

Each package has versions 1.0 and 1.1; the fix's 1.1 asks for a reboot as a kernel update
does (/var/run/reboot-required). The suites carry the origin fields our
Unattended-Upgrade::Origins-Pattern selects on (hardening.UPGRADE_ORIGINS), as the
distro's own security archive does. Release files follow Debian's repository format
(https://wiki.debian.org/DebianRepository/Format); InRelease is signed by a key made per
lab (gpg), which hosts are given with signed-by, as a real mirror's would be."""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

FIX, FEATURE = "agentctl-lab-fix", "agentctl-lab-feature"
OLD, NEW = "1.0", "1.1"
ARCH = "amd64"


@dataclass(frozen=True)
class Suite:
    dist: str  # the folder under dists/, as a sources line names it
    fields: dict[str, str]  # Origin, Label, Suite, Codename
    package: str


# What each distro's security archive and its ordinary one say of themselves.
SUITES = {
    "debian-12": [Suite("bookworm-security", {"Origin": "Debian", "Label": "Debian-Security",
                                              "Suite": "stable-security", "Codename": "bookworm-security"}, FIX),
                  Suite("bookworm", {"Origin": "Debian", "Label": "Debian", "Suite": "stable",
                                     "Codename": "bookworm"}, FEATURE)],
    "ubuntu-24.04": [Suite("noble-security", {"Origin": "Ubuntu", "Label": "Ubuntu",
                                              "Suite": "noble-security", "Codename": "noble"}, FIX),
                     Suite("noble-updates", {"Origin": "Ubuntu", "Label": "Ubuntu",
                                             "Suite": "noble-updates", "Codename": "noble"}, FEATURE)],
}
POSTINST_REBOOT = """#!/bin/sh
set -e
# as a kernel's postinst does: unattended-upgrades reboots on this file
touch /var/run/reboot-required
echo {name} >> /var/run/reboot-required.pkgs
"""


class AptRepoError(Exception):
    pass


def keyring(repo: Path) -> Path:
    """The repository's public key, for a sources entry's signed-by."""
    return repo / "lab-archive-keyring.gpg"


def sources_line(distro: str, url: str = "http://deb.lab.test/debian") -> str:
    """The one-line-style sources entries a lab host adds for this mirror."""
    return "".join(f"deb [signed-by=/etc/apt/keyrings/agentctl-lab.gpg] {url} {s.dist} main\n"
                   for s in SUITES[distro])


def build(repo: Path, distro: str) -> Path:
    """Make the repository in `repo` (once: an existing one is kept, its key with it)."""
    if (repo / "dists" / SUITES[distro][0].dist / "InRelease").is_file():
        return repo
    repo.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        gnupg = Path(tmp) / "gnupg"
        gnupg.mkdir(mode=0o700)
        _gpg(gnupg, "--quick-gen-key", "agentctl lab archive <archive@lab.test>", "ed25519", "sign", "never")
        keyring(repo).write_bytes(_gpg(gnupg, "--export"))
        for suite in SUITES[distro]:
            debs = [_deb(repo / "pool", suite.package, v, Path(tmp)) for v in (OLD, NEW)]
            binary = repo / "dists" / suite.dist / "main" / f"binary-{ARCH}"
            binary.mkdir(parents=True, exist_ok=True)
            (binary / "Packages").write_text("\n".join(_stanza(repo, d) for d in debs))
            release = repo / "dists" / suite.dist / "Release"
            release.write_text(_release(suite, binary / "Packages", release.parent))
            _gpg(gnupg, "--clearsign", "--output", str(release.parent / "InRelease"), str(release))
    return repo


def _gpg(home: Path, *args: str) -> bytes:
    proc = subprocess.run(["gpg", "--batch", "--quiet", "--passphrase", "", "--pinentry-mode", "loopback",
                           "--homedir", str(home), *args], capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise AptRepoError(f"gpg {args[0]} failed: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    return proc.stdout


def _deb(pool: Path, name: str, version: str, tmp: Path) -> Path:
    root = tmp / f"{name}-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    doc = root / "usr" / "share" / "doc" / name
    doc.mkdir(parents=True)
    (doc / "README").write_text(f"{name} {version}: a package of the agentctl lab's apt mirror\n")
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: agentctl lab <lab@lab.test>\n"
        f"Section: misc\nPriority: optional\nDescription: agentctl lab {name}\n"
        " A package of the agentctl lab's apt mirror, for unattended-upgrades to act on.\n")
    if name == FIX and version == NEW:
        postinst = root / "DEBIAN" / "postinst"
        postinst.write_text(POSTINST_REBOOT.format(name=name))
        postinst.chmod(0o755)
    pool.mkdir(parents=True, exist_ok=True)
    deb = pool / f"{name}_{version}_all.deb"
    proc = subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise AptRepoError(f"dpkg-deb failed for {name} {version}: {proc.stderr.strip()[-300:]}")
    return deb


def _stanza(repo: Path, deb: Path) -> str:
    control = subprocess.run(["dpkg-deb", "--field", str(deb)], capture_output=True, text=True,
                             check=True, timeout=30).stdout.rstrip("\n")
    data = deb.read_bytes()
    return (f"{control}\nFilename: {deb.relative_to(repo)}\nSize: {len(data)}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n")


def _release(suite: Suite, packages: Path, dist_dir: Path) -> str:
    data = packages.read_bytes()
    fields = {**suite.fields, "Date": formatdate(usegmt=True), "Architectures": ARCH, "Components": "main"}
    head = "".join(f"{k}: {v}\n" for k, v in fields.items())
    rel = os.path.relpath(packages, dist_dir)
    return head + f"SHA256:\n {hashlib.sha256(data).hexdigest()} {len(data)} {rel}\n"
