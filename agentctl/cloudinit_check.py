"""Check rendered user-data with the real cloud-init, which is not on PyPI.

The Debian packages are fetched with apt into a private cache (the machine's own apt
sources and state are not touched) and unpacked; their Python code then runs from
there. bookworm carries cloud-init 22.4 (Debian 12's); trixie carries 25.x, the
generation Ubuntu 24.04 runs. Both must accept what we render.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("AGENTCTL_CACHE", "/var/cache/agentctl")) / "cloud-init"
SUITES = {"debian-12": "bookworm", "ubuntu-24.04": "trixie"}
_MIRROR = "http://deb.debian.org/debian"


def _apt(suite: str, *args: str) -> None:
    base = CACHE / "apt" / suite
    (base / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (base / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = base / "sources.list"
    sources.write_text(f"deb {_MIRROR} {suite} main\n")
    opts = [f"-oDir::Etc::sourcelist={sources}", "-oDir::Etc::sourceparts=/dev/null",
            f"-oDir::State::lists={base / 'lists'}", f"-oDir::Cache={base / 'cache'}", "-oDebug::NoLocking=1",
            "-oAPT::Sandbox::User=root", "-qq"]
    subprocess.run(["apt-get", *opts, *args], check=True, cwd=base, stdout=subprocess.DEVNULL)


def ensure(distro: str) -> Path:
    """The unpacked cloud-init for a distro's generation; fetched on first use."""
    suite = SUITES[distro]
    root = CACHE / suite / "root"
    if (root / "usr/lib/python3/dist-packages/cloudinit").is_dir():
        return root
    _apt(suite, "update")
    _apt(suite, "download", "cloud-init")
    deb = sorted((CACHE / "apt" / suite).glob("cloud-init_*.deb"))[-1]
    staging = root.with_name("root.partial")
    subprocess.run(["rm", "-rf", str(staging)], check=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg", "-x", str(deb), str(staging)], check=True)
    staging.rename(root)
    return root


def _run(distro: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    root = ensure(distro)
    env = dict(os.environ, PYTHONPATH=str(root / "usr/lib/python3/dist-packages"))
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=120)


def schema_errors(user_data: Path, distro: str) -> str | None:
    """None when cloud-init's own schema check accepts the file, else its message."""
    proc = _run(distro, "import sys; from cloudinit.cmd import main; "
                        "sys.argv=['cloud-init','schema','--config-file',sys.argv[1]]; sys.exit(main.main())",
                str(user_data))
    if proc.returncode == 0 and "Valid" in proc.stdout:
        return None
    return (proc.stdout + proc.stderr).strip() or f"cloud-init schema exited {proc.returncode}"


def read_as_cloud_init(blob: Path, distro: str, *, datasource: str = "") -> str:
    """Feed raw user-data (plain or gzip) through cloud-init's own user-data processor
    and return the cloud-config text it extracts. datasource="hetzner" first decodes it
    as cloud-init's Hetzner datasource does (maybe_b64decode: base64 if it is base64)."""
    decode = ""
    if datasource == "hetzner":
        # 22.4 keeps the helper in the Hetzner helpers; 25.x moved it to cloudinit.util.
        decode = ("try:\n    from cloudinit.util import maybe_b64decode\n"
                  "except ImportError:\n    from cloudinit.sources.helpers.hetzner import maybe_b64decode\n"
                  "raw = maybe_b64decode(raw)\n")
    proc = _run(distro, "import sys; from cloudinit.user_data import UserDataProcessor\n"
                        "raw = open(sys.argv[1],'rb').read()\n" + decode +
                        "msg = UserDataProcessor({}).process(raw)\n"
                        "parts = [p for p in msg.walk() if p.get_content_type() == 'text/cloud-config']\n"
                        "sys.stdout.write(parts[0].get_payload(decode=True).decode())", str(blob))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip())
    return proc.stdout
