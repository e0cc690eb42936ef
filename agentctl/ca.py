"""The deployment's interception CA: made once per stack, on the operator's machine.

The certificate goes into every host's user-data (agents must trust it); the private
key never does: on AWS the stack stores it in SSM for the proxy's instance profile,
on Hetzner and in the lab it is copied onto the proxy host out of band.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Ca:
    cert_path: Path
    key_path: Path

    @property
    def cert_pem(self) -> str:
        return self.cert_path.read_text()

    @property
    def fingerprint_sha256(self) -> str:
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def ca_dir(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / ".agentctl" / stack / "ca"


def ensure_ca(project_dir: Path, stack: str) -> Ca:
    """Return the stack's CA, creating it on first use."""
    folder = ca_dir(project_dir, stack)
    ca = Ca(folder / "ca.crt", folder / "ca.key")
    if ca.cert_path.is_file() and ca.key_path.is_file():
        return ca
    key_pem, cert_pem = new_ca(f"agentctl {stack} egress CA")
    return _write(project_dir, stack, key_pem, cert_pem)


def _write(project_dir: Path, stack: str, key_pem: bytes, cert_pem: bytes) -> Ca:
    folder = ca_dir(project_dir, stack)
    ca = Ca(folder / "ca.crt", folder / "ca.key")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    # O_EXCL: two concurrent first runs must not end with a key that does not match its cert.
    fd = os.open(ca.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    ca.cert_path.write_bytes(cert_pem)
    return ca


def new_ca(common_name: str, days: int = 3650) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agentctl")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class PendingCa:
    """The stack's CA as render needs it: the existing one, or a new one that is
    written only by save(), after every input has been checked."""

    project_dir: Path
    stack: str
    cert_pem: str
    key_pem: bytes | None  # None: it exists on disk already

    def save(self) -> Ca:
        if self.key_pem is None:
            return ensure_ca(self.project_dir, self.stack)
        return _write(self.project_dir, self.stack, self.key_pem, self.cert_pem.encode())


def pending_ca(project_dir: Path, stack: str) -> PendingCa:
    folder = ca_dir(project_dir, stack)
    if (folder / "ca.crt").is_file() and (folder / "ca.key").is_file():
        return PendingCa(Path(project_dir), stack, (folder / "ca.crt").read_text(), None)
    key_pem, cert_pem = new_ca(f"agentctl {stack} egress CA")
    return PendingCa(Path(project_dir), stack, cert_pem.decode(), key_pem)
