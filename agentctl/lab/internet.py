"""The lab internet: upstream APIs and a rogue server, each a process in its own lab
namespace, with TLS certificates from a lab CA that only the proxy trusts (it is the
proxy's `upstream_ca_bundle`; agents trust only the proxy's interception CA)."""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentctl import hermes
from agentctl.ca import new_ca
from agentctl.lab import topology
from agentctl.lab.netns import LabNetworkError
from agentctl.model import Deployment

ASSETS = Path(__file__).parent / "assets"
# The scripted fakes of real APIs (topology.FAKES), by role.
FAKE_SCRIPTS = {"model": "fake_anthropic.py", "chat": "fake_telegram.py"}


def ensure_internet_ca(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = folder / "ca.crt", folder / "ca.key"
    if not (cert.is_file() and key.is_file()):
        key_pem, cert_pem = new_ca("agentctl lab internet CA")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        cert.write_bytes(cert_pem)
    return cert, key


def issue_leaf(ca_cert: Path, ca_key: Path, names: list[str], ips: list[str], out: Path) -> tuple[Path, Path]:
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)
            .sign(signer, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    crt, k = out / "server.crt", out / "server.key"
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    os.chmod(k, 0o600)
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, k


def ca_cert_path(state_dir: Path) -> Path:
    """The lab internet CA's certificate (ensure_internet_ca makes it at `lab up`)."""
    return state_dir / "internet" / "ca" / "ca.crt"


def apt_repo_dir(state_dir: Path) -> Path:
    """The lab's apt mirror (agentctl/lab/aptrepo.py), made at `lab up`."""
    return state_dir / "internet" / "apt"


def request_log(state_dir: Path) -> Path:
    return state_dir / "internet" / "requests.jsonl"


def start(deployment: Deployment, state_dir: Path, wheel_dirs: list[Path] = (),
          apt_repo: Path | None = None) -> dict[str, int]:
    """Start every lab internet server; return {namespace: pid}. Upstream servers are
    also the lab's package index (pypi.lab.test), serving every wheel in `wheel_dirs`,
    and its apt mirror (deb.lab.test/debian/, the repository in `apt_repo`)."""
    folder = state_dir / "internet"
    ca_cert, ca_key = ensure_internet_ca(folder / "ca")
    log = request_log(state_dir)
    log.touch()
    pids: dict[str, int] = {}
    by_ip = {n.ip: n for n in topology.nodes(deployment) if n.kind == "internet"}
    for srv in topology.internet_servers(deployment):
        node = by_ip[srv.ip]
        crt, key = issue_leaf(ca_cert, ca_key, list(srv.names), [srv.ip] + ([srv.ip6] if srv.ip6 else []),
                              folder / node.name)
        if srv.role in FAKE_SCRIPTS:
            argv = [FAKE_SCRIPTS[srv.role], f"--listen={srv.ip}:443", f"--cert={crt}", f"--key={key}",
                    f"--log={fake_log(state_dir, srv.role)}", *_fake_args(deployment, srv.role)]
        else:
            argv = ["lab_internet.py", "--role", srv.role, "--ip", srv.ip, "--cert", str(crt), "--key", str(key),
                    "--log", str(log), *(f"--wheels={w}" for w in (wheel_dirs if srv.role == "upstream" else ())),
                    *([f"--apt={apt_repo}"] if apt_repo and srv.role == "upstream" else [])]
        out = open(folder / f"{node.name}.out", "ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node.netns, sys.executable, str(ASSETS / argv[0]), *argv[1:]],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        pids[node.netns] = proc.pid
    _wait_ready(folder, [n for n in by_ip.values()])
    return pids


def fake_log(state_dir: Path, role: str) -> Path:
    """Where a fake service (model, chat) writes one JSON line per request."""
    return state_dir / "internet" / f"{role}.jsonl"


def _fake_args(deployment: Deployment, role: str) -> list[str]:
    """What the fake must know of the stack: the stand-in the agent host holds (flagged
    if it ever arrives upstream) and, for the chat, the operator Hermes listens to."""
    if role == "model":
        return [f"--placeholder={hermes.PLACEHOLDER_MODEL_KEY}"]
    users = [u for a in deployment.agents if a.runtime.hermes for u in a.runtime.hermes.telegram.allowed_users]
    return [f"--placeholder={hermes.PLACEHOLDER_BOT_TOKEN}", *([f"--operator-id={users[0]}"] if users else [])]


def chat_operator(deployment: Deployment, state_dir: Path, verb: str, body: dict | None = None):
    """Play the operator on the lab's fake chat (fake_telegram.py's /_operator/ API:
    send, press, sent, calls), from inside the chat's own lab namespace, the fake's
    certificate checked against the lab internet CA. The parsed JSON answer."""
    chat = next(s for s in topology.internet_servers(deployment) if s.role == "chat")
    node = next(n for n in topology.nodes(deployment) if n.ip == chat.ip)
    name = chat.names[0]
    argv = ["ip", "netns", "exec", node.netns, "curl", "-sS", "-m", "10",
            "--cacert", str(ca_cert_path(state_dir)), "--resolve", f"{name}:443:{chat.ip}",
            f"https://{name}/_operator/{verb}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise LabNetworkError(f"lab chat operator {verb}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def _wait_ready(folder: Path, nodes: list[topology.Node], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    for node in nodes:
        out = folder / f"{node.name}.out"
        while "ready" not in out.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise LabNetworkError(f"lab internet server {node.name} did not start: {out.read_text()[-400:]}")
            time.sleep(0.1)


def requests_since(state_dir: Path, offset: int) -> list[dict]:
    """Lines the lab internet servers wrote after byte `offset` of their log."""
    log = request_log(state_dir)
    if not log.exists():
        return []
    with open(log, "rb") as fh:
        fh.seek(offset)
        return [json.loads(line) for line in fh.read().decode(errors="replace").splitlines() if line.strip()]


def log_size(state_dir: Path) -> int:
    log = request_log(state_dir)
    return log.stat().st_size if log.exists() else 0
