"""pki: the CA pair and the trust bundle parse, and the key belongs to the certificate."""

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agentctl_proxy import pki
from agentctl_proxy.ca import init_ca


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    cert, key = init_ca(tmp_path_factory.mktemp("ca"))
    return cert.read_bytes(), key.read_bytes()


def test_a_matching_pair_passes(ca):
    pki.check_ca_key(pki.load_ca_cert(ca[0]), ca[1])
    pki.check_bundle(ca[0] + ca[0])


def test_another_key_or_an_encrypted_one_is_refused(ca):
    other = ec.generate_private_key(ec.SECP256R1())
    plain = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    locked = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(b"pw"))
    cert = pki.load_ca_cert(ca[0])
    with pytest.raises(ValueError, match="does not match"):
        pki.check_ca_key(cert, plain)
    with pytest.raises(ValueError, match="encrypted"):
        pki.check_ca_key(cert, locked)
    with pytest.raises(ValueError, match="not a PEM private key"):
        pki.check_ca_key(cert, b"garbage")


def test_garbage_is_refused(ca):
    with pytest.raises(ValueError, match="not a PEM certificate"):
        pki.load_ca_cert(ca[1])
    with pytest.raises(ValueError, match="not a PEM bundle"):
        pki.check_bundle(b"")
