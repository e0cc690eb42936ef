"""Where a deployment's secrets live, by cloud. Names only: values never pass here."""
from __future__ import annotations

SECRETS_DIR = "/etc/agentctl-proxy/secrets"
CA_KEY_PATH = "/etc/agentctl-proxy/ca.key"


def ssm_parameter_name(project: str, stack: str, agent: str, secret: str) -> str:
    return f"/{project}/{stack}/{agent}/{secret}"


def ssm_prefix(project: str, stack: str) -> str:
    return f"/{project}/{stack}/"


def ca_key_parameter_name(project: str, stack: str) -> str:
    # "_proxy": agent names cannot contain "_", so no agent secret can take this path.
    return f"/{project}/{stack}/_proxy/ca-key"


def proxy_config_parameter_name(project: str, stack: str) -> str:
    """AWS: the proxy's policy (gzip + base64 of config.yaml), read by its policy-pull."""
    return f"/{project}/{stack}/_proxy/config"


def secret_file_path(agent: str, secret: str) -> str:
    return f"{SECRETS_DIR}/{agent}/{secret}"

# Tailscale's auth key reaches the proxy host like every other secret: out of band.
TAILSCALE_AUTHKEY_PATH = "/etc/agentctl/tailscale-authkey"

# The one command that writes a pushed secret on the proxy (roles/proxy/templates/
# install-secret.sh.j2). sudo's I/O logging is off for it alone (templates/sudoers.j2):
# its standard input is the secret, and sudoers(5) logs a piped stdin under log_input.
INSTALL_SECRET_BIN = "/usr/local/sbin/agentctl-install-secret"
# Owners a pushed file may get: the proxy's service user, or root (Tailscale's key).
# owner or owner:group; the proxy's config is root's, readable by the proxy's group.
SECRET_OWNERS = ("agentctl-proxy", "root", "root:agentctl-proxy")
# The proxy's policy: in user-data at first boot, pushed with the secrets on Hetzner.
PROXY_CONFIG_PATH = "/etc/agentctl-proxy/config.yaml"
