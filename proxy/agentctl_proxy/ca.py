"""`ca init`: a new interception CA, key 0600, never overwriting an existing one."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from mitmproxy import certs

CERT_NAME, KEY_NAME = "ca.crt", "ca.key"


class CaError(Exception):
    """str() is the one line to print."""


class CaExists(CaError):
    pass


def init_ca(directory: str | Path, cn: str = "agentctl-proxy CA") -> tuple[Path, Path]:
    d = Path(directory)
    cert_path, key_path = d / CERT_NAME, d / KEY_NAME
    for p in (cert_path, key_path):
        if p.exists():
            raise CaExists(f"{p} already exists; refusing to overwrite a CA")
    if d.exists() and not d.is_dir():
        raise CaError(f"{d}: not a directory; expected where to write {CERT_NAME} and {KEY_NAME}")
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o755)
        return _write_ca(cn, cert_path, key_path)
    except FileExistsError as e:  # the key or cert appeared meanwhile (O_EXCL)
        raise CaExists(f"{e.filename} already exists; refusing to overwrite a CA") from None
    except OSError as e:  # e.g. --dir under a regular file, or not writable
        raise CaError(f"{d}: cannot write the CA there: {e.strerror}") from None


def _write_ca(cn: str, cert_path: Path, key_path: Path) -> tuple[Path, Path]:
    key, cert = certs.create_ca(organization="agentctl", cn=cn, key_size=2048)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # O_EXCL: a file that appeared meanwhile is not overwritten; 0600 from the start
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    fd = os.open(cert_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
