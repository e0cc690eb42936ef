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
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pem, cert_pem = new_ca(f"agentctl {stack} egress CA")
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
