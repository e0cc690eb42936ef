import stat
import subprocess
import sys

from cryptography import x509


def test_ca_init_key_0600_and_refuses_to_overwrite(tmp_path):
    d = tmp_path / "ca"
    run = lambda: subprocess.run([sys.executable, "-m", "agentctl_proxy", "ca", "init", "--dir", str(d)],
                                 capture_output=True, text=True)
    assert run().returncode == 0
    assert stat.S_IMODE((d / "ca.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    before = (d / "ca.key").read_bytes()
    again = run()
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert (d / "ca.key").read_bytes() == before


def test_ca_init_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    for d in (tmp_path / "file" / "ca", tmp_path / "file"):
        out = subprocess.run([sys.executable, "-m", "agentctl_proxy", "ca", "init", "--dir", str(d)],
                             capture_output=True, text=True)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert out.stderr.startswith(f"{d}: ") and out.stderr.count("\n") == 1
