"""The lab image: a distro rootfs with every role package baked in.

Lab hosts have no route to a mirror, so cloud-init's `packages:` cannot run there;
whatever a role installs must already be in the image. The image is a plain rootfs
directory (the read-only lower layer of each host's overlay), cached under a key made
of the distro, the package list, the proxy venv's requirements, this recipe's version
and the ISO week (so security updates arrive at least weekly).
"""
from __future__ import annotations

import datetime
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from pathlib import Path
from typing import Callable

from packaging.requirements import Requirement

from agentctl.errors import AgentctlError
from agentctl.render import read_package_file

DEFAULT_CACHE_DIR = Path(os.environ.get("AGENTCTL_LAB_CACHE", "/var/cache/agentctl/lab"))
# Bump when the build steps below change in a way the key would not see.
RECIPE_VERSION = "4"
PROXY_VENV = "/opt/agentctl-proxy/venv"

# What the lab itself needs on top of the roles: an init, cloud-init, tools the
# lab's checks call (lynis for `lab verify --score`, iproute2/procps for escape).
LAB_PACKAGES = ["systemd", "systemd-sysv", "dbus", "libpam-systemd", "iproute2", "procps", "cloud-init",
                "locales", "lynis", "netbase", "python3", "ca-certificates"]
# Pins on top of proxy/pyproject.toml, by the image's Python. Debian 12 (3.11): mitmproxy
# 11.0.2, with bcrypt<5 for its passlib (docs/design.md). Ubuntu 24.04 (3.12): none, so the
# venv gets what `pip install agentctl-proxy` gives a real Ubuntu host: the newest mitmproxy
# 12.x that proxy/pyproject.toml allows.
PROXY_VENV_PINS = {"3.11": ["mitmproxy==11.0.2", "bcrypt<5"], "3.12": []}

# What a VM host needs on top (`lab up --hosts vm`): the distribution's kernel (booted
# directly by QEMU, so no boot loader) and QEMU's guest agent, the lab's way into a
# VM as nsenter is into a container: a virtio serial port only root on the machine
# and root in the guest can open, no network path.
# initramfs-tools: Debian's kernel depends on it; Ubuntu 24.04's does not, and without
# it (mmdebstrap installs no Recommends) no initrd is made at all.
VM_PACKAGES = ["qemu-guest-agent", "initramfs-tools"]

DISTROS = {
    "debian-12": {"suite": "bookworm", "python": "3.11", "kernel": "linux-image-amd64", "mirrors": [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main"], "keyring": None},
    "ubuntu-24.04": {"suite": "noble", "python": "3.12", "kernel": "linux-image-virtual", "mirrors": [
        "deb http://archive.ubuntu.com/ubuntu noble main universe",
        "deb http://archive.ubuntu.com/ubuntu noble-updates main universe",
        "deb http://security.ubuntu.com/ubuntu noble-security main universe"],
        "keyring": "/usr/share/keyrings/ubuntu-archive-keyring.gpg"},
}

# Debian 12 does not package Ubuntu's archive keyring. Where it is not installed, the
# lab takes Ubuntu's own package, pinned by hash: the hash is the trust anchor, so
# a mirror (or anyone between) cannot hand us other keys.
UBUNTU_KEYRING_DEB = {
    "url": "http://archive.ubuntu.com/ubuntu/pool/main/u/ubuntu-keyring/ubuntu-keyring_2023.11.28.1_all.deb",
    "sha256": "36de43b15853ccae0028e9a767613770c704833f82586f28eb262f0311adb8a8",
    "member": "usr/share/keyrings/ubuntu-archive-keyring.gpg",
}

Progress = Callable[[str], None]


class ImageBuildError(AgentctlError):
    exit_code = 1


def package_list(project_dir: Path, distro: str = "debian-12", vm: bool = False) -> list[str]:
    """The union of every role's packages and the lab's own (and a VM's), sorted (the
    key must not depend on file order)."""
    names = set(LAB_PACKAGES)
    if vm:
        names.update([DISTROS[distro]["kernel"], *VM_PACKAGES])
    for path in sorted((Path(project_dir) / "roles").glob("*/packages.txt")):
        names.update(read_package_file(path))
    return sorted(names)


def proxy_requirements(project_dir: Path, distro: str = "debian-12") -> list[str]:
    """The proxy venv's third-party requirements for a distro's Python: the proxy's own
    dependencies whose environment markers hold there (written without the marker: the
    wheels are fetched by another Python), plus that Python's pins. The proxy itself is
    installed at `lab up`."""
    python = DISTROS[distro]["python"]
    pins = PROXY_VENV_PINS[python]
    reqs = list(pins)
    pyproject = Path(project_dir) / "proxy" / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        # the proxy host runs agentctl-proxy[server]: its base install is only the schema
        deps = project.get("dependencies", []) + project.get("optional-dependencies", {}).get("server", [])
        pinned = {Requirement(p).name.lower() for p in pins}
        reqs += [r for r in requirements_for(deps, python) if Requirement(r).name.lower() not in pinned]
    return reqs


def requirements_for(deps: list[str], python: str) -> list[str]:
    """`deps` as another Python reads them: those whose environment markers hold for
    `python`, written without the marker (pip evaluates markers with its own interpreter,
    whatever --python-version says)."""
    env = {"python_version": python, "python_full_version": python + ".0"}
    out = []
    for dep in map(Requirement, deps):
        if dep.marker is not None and not dep.marker.evaluate(env):
            continue
        dep.marker = None
        out.append(str(dep))
    return out


def cache_key(distro: str, packages: list[str], requirements: list[str], today: datetime.date) -> str:
    year, week, _ = today.isocalendar()
    digest = hashlib.sha256("\n".join([RECIPE_VERSION, distro, *sorted(packages), "--", *sorted(requirements)])
                            .encode()).hexdigest()[:12]
    return f"{distro}-{year}w{week:02d}-{digest}"


def image_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / key


def ensure_image(project_dir: Path, distro: str = "debian-12", cache_dir: Path = DEFAULT_CACHE_DIR,
                 progress: Progress = lambda _msg: None, today: datetime.date | None = None,
                 vm: bool = False) -> Path:
    """Return the cached rootfs for this package list and week, building it if missing.
    A VM's rootfs is an image of its own (`<distro>-vm-...`), so neither evicts the other."""
    packages, reqs = package_list(project_dir, distro, vm), proxy_requirements(project_dir, distro)
    key = cache_key(f"{distro}-vm" if vm else distro, packages, reqs, today or datetime.date.today())
    target = image_path(cache_dir, key)
    if (target / "etc" / "os-release").exists():
        return target
    build_image(target, distro, packages, reqs, progress, vm)
    prune_old_images(Path(cache_dir), keep=target)
    return target


def build_image(target: Path, distro: str, packages: list[str], reqs: list[str], progress: Progress,
                vm: bool = False) -> None:
    """Build into a temporary folder beside the target and rename it into place, so a
    killed build never leaves something that looks like a finished image."""
    if distro not in DISTROS:
        raise ImageBuildError(f"lab image: unknown distro {distro!r}; expected one of {', '.join(DISTROS)}")
    spec = DISTROS[distro]
    target.parent.mkdir(parents=True, exist_ok=True)
    keyring = archive_keyring(spec, target.parent) if spec["keyring"] else None
    for stale in target.parent.glob(f".tmp-{target.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed build
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    rootfs, wheels = work / "rootfs", work / "wheels"
    try:
        # `pip wheel`, not `pip download`: a few dependencies are sdists only
        # (pyperclip), and the image's pip has no index to build them from.
        progress("fetching the proxy venv's wheels from PyPI")
        same_python = spec["python"] == "%d.%d" % sys.version_info[:2]
        # Another Python may not install these at all (mitmproxy 12 needs >= 3.12): then
        # the binary wheels below are all there is, and must be enough.
        _run(["python3", "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), *reqs], "pip wheel",
             required=same_python)
        if not same_python:
            # The image's Python differs from ours: add its binary wheels. The pure
            # wheels just built (those sdists among them) satisfy the rest.
            _run(["python3", "-m", "pip", "download", "--quiet", "--dest", str(wheels), "--find-links", str(wheels),
                  "--only-binary=:all:", "--python-version", spec["python"], *manylinux_platforms(), *reqs],
                 "pip download")
        progress(f"mmdebstrap {spec['suite']} ({len(packages)} packages)")
        hook = work / "customize.sh"
        hook.write_text(_customize_script(reqs, vm))
        cmd = ["mmdebstrap", "--mode=root", "--variant=apt", "--quiet",
               "--include=" + ",".join(packages),
               "--customize-hook=copy-in " + str(wheels) + " /tmp",
               "--customize-hook=" + f"{hook} \"$1\""]
        if keyring:
            cmd.append(f"--keyring={keyring}")
        cmd += [spec["suite"], str(rootfs), *spec["mirrors"]]
        hook.chmod(0o755)
        _run(cmd, "mmdebstrap")
        if target.exists():
            shutil.rmtree(target)
        rootfs.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def archive_keyring(spec: dict, cache_dir: Path) -> Path:
    """The distro's archive keyring: the installed one, else the pinned package's."""
    installed = Path(spec["keyring"])
    if installed.is_file():
        return installed
    cached = Path(cache_dir) / ".keyrings" / installed.name
    if cached.is_file():
        return cached
    pin = UBUNTU_KEYRING_DEB
    try:
        with urllib.request.urlopen(pin["url"], timeout=30) as resp:
            deb = resp.read()
    except OSError as exc:
        raise ImageBuildError(f"lab image: {installed} is not installed and {pin['url']} does not answer ({exc}); "
                              "install ubuntu-keyring or use --distro debian-12") from None
    if hashlib.sha256(deb).hexdigest() != pin["sha256"]:
        raise ImageBuildError(f"lab image: {pin['url']} does not have the pinned SHA-256 {pin['sha256']}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.deb").write_bytes(deb)
        _run(["dpkg-deb", "-x", str(Path(tmp) / "k.deb"), str(Path(tmp) / "x")], "dpkg-deb")
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "x" / pin["member"], cached)
    return cached


def manylinux_platforms() -> list[str]:
    arch = platform.machine()
    tags = [f"manylinux2014_{arch}"] + [f"manylinux_2_{minor}_{arch}" for minor in range(17, 40)]
    return [arg for tag in tags for arg in ("--platform", tag)]


def prune_old_images(cache_dir: Path, keep: Path) -> None:
    """Old weeks' images are never used again; keep the cache to one image per distro."""
    distro = keep.name.split("-20", 1)[0]
    for old in cache_dir.iterdir():
        if old != keep and old.is_dir() and not old.name.startswith(".") and old.name.startswith(distro + "-20"):
            shutil.rmtree(old, ignore_errors=True)


def _customize_script(reqs: list[str], vm: bool = False) -> str:
    quoted = " ".join("'" + r.replace("'", "") + "'" for r in reqs)
    # The lab has no time server. A container has no hardware clock or real consoles
    # either, nor an audit subsystem of its own (auditd would start before cloud-init
    # and fail); a VM has all three (its serial console is the lab's console.log).
    masked = "systemd-timesyncd.service" if vm else \
        "systemd-timesyncd.service getty@tty1.service serial-getty@console.service auditd.service"
    # The kernel's install hook makes the initrd only if initramfs-tools was there first.
    initrd = ("""for k in "$root"/boot/vmlinuz-*; do v=${k##*/vmlinuz-}; """
              """[ -e "$root/boot/initrd.img-$v" ] || chroot "$root" update-initramfs -c -k "$v" >/dev/null; done\n"""
              if vm else "")
    return f"""#!/bin/sh
set -eu
root="$1"
# mmdebstrap copied the build machine's resolv.conf; a lab host must not inherit it.
rm -f "$root/etc/resolv.conf"
printf '# agentctl lab: DNS is set by the role (the proxy for agents)\\n' > "$root/etc/resolv.conf"
# Host keys made at package install would be shared by every host; cloud-init makes new ones.
rm -f "$root"/etc/ssh/ssh_host_*
# The lab sets each namespace's addresses from outside; cloud-init must not touch them.
mkdir -p "$root/etc/cloud/cloud.cfg.d"
cat > "$root/etc/cloud/cloud.cfg.d/05-agentctl-lab.cfg" <<'EOF'
datasource_list: [NoCloud, None]
network: {{config: disabled}}
EOF
# cloud-init's locale step runs locale-gen at boot (20 s in a TCG VM) unless the locale
# is generated and /etc/default/locale names it (cloudinit/distros/debian.py apply_locale).
sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' "$root/etc/locale.gen"
chroot "$root" locale-gen >/dev/null
printf 'LANG=en_US.UTF-8\\n' > "$root/etc/default/locale"
# The proxy's third-party dependencies, from wheels fetched on the build machine
# (the lab proxy has no route to PyPI); agentctl-proxy itself is added at `lab up`.
chroot "$root" python3 -m venv {PROXY_VENV}
chroot "$root" {PROXY_VENV}/bin/pip install --quiet --no-index --find-links /tmp/wheels {quoted}
rm -rf "$root/tmp/wheels"
# Units that can only fail on a lab host.
for unit in {masked}; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
{initrd}echo agentctl-lab > "$root/etc/hostname"
: > "$root/etc/machine-id"
apt-get -o Dir="$root" clean 2>/dev/null || rm -rf "$root"/var/cache/apt/archives/*.deb
"""


def _run(cmd: list[str], what: str, required: bool = True) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and required:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise ImageBuildError(f"lab image: {what} failed (exit {proc.returncode}): " + " | ".join(tail))
