"""The PEM files the proxy needs at start, parsed at the boundary.

mitmproxy reads the CA and the trust bundle only once its listeners start, and dies
with a traceback on a bad one; `check` and `run` call these first, so a garbage or
mismatched file is one line naming the key instead. Parsers raise ValueError.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization


def load_ca_cert(pem: bytes) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ValueError("not a PEM certificate") from None
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    if not ca:  # mitmproxy would sign leaf certificates no client accepts
        raise ValueError("not a CA certificate (needs basicConstraints CA:TRUE)")
    return cert


def check_ca_key(cert: x509.Certificate, pem: bytes) -> None:
    """The key parses, is unencrypted, and is the private half of the CA certificate."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ValueError("the key is encrypted; expected an unencrypted PEM private key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not a PEM private key") from None
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise ValueError("does not match tls.ca_cert (a different key pair)")


def check_bundle(pem: bytes) -> None:
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError("not a PEM bundle of certificates") from None


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
