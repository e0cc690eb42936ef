"""The Hermes agent's configuration, rendered from the stack file.

One definition of what Hermes is told: the same settings go into Hermes' managed layer
(`/etc/hermes/config.yaml` and `.env`, root's, applied last and winning per key) and into
the user config in `$HERMES_HOME` (root's and read-only as well: Hermes reads some
sections, `secrets:` and keys the managed file does not name, only from there).

Every key is one hermes-agent 0.19.0 reads; docs/hermes.md names the source file that
reads each (paths under the wheel's site-packages). Credentials are placeholders: the
proxy strips them and injects the real values on the way out.
"""
from __future__ import annotations

from typing import Any

from agentctl.model import Hermes

# Where the agent host keeps Hermes. HERMES_HOME (its state: sessions, memories, skills)
# sits in a root-owned parent the agent cannot write, root-owned and sticky itself, so
# the agent can neither replace the root-owned files in it nor the folder.
HOME = "/var/lib/agentctl-hermes"
USER_CONFIG = f"{HOME}/config.yaml"
# Hermes' managed layer: hermes_cli/managed_scope.py get_managed_dir (its default
# location, also named in the unit's environment so no .env can point elsewhere).
MANAGED_DIR = "/etc/hermes"
# Installed as a package runtime (agentctl-runtime-install, render.RUNTIME_BASE): the
# link to the running venv.
VENV = "/opt/agentctl-runtime/venv"

# Placeholders the agent host holds instead of credentials. The model key must start
# `sk-ant-api`: other `sk-ant-` keys are taken for OAuth tokens and sent as a Bearer
# header (agent/anthropic_adapter.py _is_oauth_token); this one goes out as x-api-key,
# the header the proxy drops and injects. The bot token must look usable to Hermes
# (hermes_cli/auth.py has_usable_secret) and sits in the Bot API's URL path.
PLACEHOLDER_MODEL_KEY = "sk-ant-api03-agentctl-no-key-here-the-proxy-injects-it"
PLACEHOLDER_BOT_TOKEN = "1:agentctl-no-token-here-the-proxy-injects-it"
# A Telegram Bot API address, so the adapter never asks DNS-over-HTTPS for one at each
# connect (plugins/platforms/telegram/adapter.py connect -> telegram_network).
TELEGRAM_FALLBACK_IPS = ["149.154.167.220"]

# Hosts Hermes contacts on its own, none needed for its work, all left denied by the
# allowlist (docs/hermes.md, "Hosts Hermes contacts on its own"): the tirith scanner's
# download, model metadata, the update check; and the model-listing paths it probes on
# the model host.
OWN_CONTACTS = frozenset({"github.com", "models.dev", "openrouter.ai", "pypi.org"})
MODEL_HOST_PROBES = frozenset({"/v1/models", "/models", "/api/v1/models", "/api/tags", "/v1/props", "/props",
                               "/version"})

# Files in HERMES_HOME that are root's and read-only for the agent: the ones Hermes
# loads settings, code or consent from (docs/hermes.md, "Every route ...").
ROOT_FILES = {".env": "", ".op.env": "", "shell-hooks-allowlist.json": "{}\n"}
# Folders Hermes imports code or reads authorisations from; root's, empty, 0755.
ROOT_DIRS = ("hooks", "plugins", "pairing", "platforms", "platforms/pairing")


def root_paths() -> list[str]:
    """The guardrail files and folders above, as paths: read-only to the agent (its unit's
    ReadOnlyPaths=, its AppArmor profile)."""
    return [f"{HOME}/{n}" for n in (*ROOT_FILES, *ROOT_DIRS)]


def config(h: Hermes) -> dict[str, Any]:
    """config.yaml, both layers."""
    return {
        "model": {"provider": h.model.provider, "default": h.model.name, "base_url": h.model.base_url},
        # tools/approval.py _get_approval_mode / _get_cron_approval_mode
        "approvals": {"mode": "manual", "cron_mode": "deny"},
        # tools/approval.py load_permanent_allowlist: an entry `*` would approve everything
        "command_allowlist": [],
        # tools/approval.py _should_skip_container_guards: other backends skip approvals
        "terminal": {"backend": "local"},
        "security": {
            # tools/lazy_deps.py _allow_lazy_installs: no pip install at run time
            "allow_lazy_installs": False,
            # tools/tirith_security.py: no scanner download from github.com (it fails open
            # without one); TIRITH_ENABLED in the managed .env pins it against the env
            "tirith_enabled": False,
            # tools/url_safety.py _global_allow_private_urls: the proxy's DNS answers every
            # allowed name with its own private address, which Hermes would otherwise refuse
            # for its web tools. The proxy refuses private and metadata targets itself
            # (upstream_deny_cidrs), and Hermes keeps 169.254.0.0/16 blocked regardless.
            "allow_private_urls": True,
        },
        # hermes_cli/plugins.py _get_enabled_plugins: no user plugin is loaded
        "plugins": {"enabled": []},
        # agent/shell_hooks.py: no shell hook runs without consent
        "hooks": {},
        "hooks_auto_accept": False,
        # hermes_cli/model_catalog.py: no catalog fetch from the vendor's site
        "model_catalog": {"enabled": False},
        # gateway/config.py load_gateway_config: strangers get no pairing code
        "unauthorized_dm_behavior": "ignore",
        "platforms": {"telegram": {"enabled": True, "extra": {"fallback_ips": TELEGRAM_FALLBACK_IPS}}},
    }


def managed_env(h: Hermes) -> dict[str, str]:
    """The managed .env: applied last, with override (hermes_cli/env_loader.py
    _apply_managed_env), so these beat anything else that sets the same names."""
    users = ",".join(str(u) for u in h.telegram.allowed_users)
    return {
        "ANTHROPIC_API_KEY": PLACEHOLDER_MODEL_KEY,
        "TELEGRAM_BOT_TOKEN": PLACEHOLDER_BOT_TOKEN,
        "TELEGRAM_ALLOWED_USERS": users,  # gateway/authz_mixin.py, the adapter's intake check
        "TELEGRAM_ALLOW_ALL_USERS": "false",
        "GATEWAY_ALLOW_ALL_USERS": "false",
        "HERMES_TELEGRAM_DISABLE_FALLBACK_IPS": "1",
        "HERMES_YOLO_MODE": "0",  # tools/approval.py: frozen at import
        "HERMES_ACCEPT_HOOKS": "0",  # agent/shell_hooks.py
        "HERMES_ENABLE_PROJECT_PLUGINS": "0",  # hermes_cli/plugins.py: ./.hermes/plugins
        "TIRITH_ENABLED": "false",  # tools/tirith_security.py: env beats config
    }


def env_text(values: dict[str, str]) -> str:
    return "# Managed by agentctl (agentctl/hermes.py)\n" + \
        "".join(f"{k}={v}\n" for k, v in values.items())


def unit_environment() -> dict[str, str]:
    """Set by the unit: HERMES_MANAGED_DIR from the process environment, so the agent's
    `.op.env` (override=False) cannot set it, and its `.env` is root's."""
    return {"HERMES_HOME": HOME, "HERMES_MANAGED_DIR": MANAGED_DIR, "PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin"}
