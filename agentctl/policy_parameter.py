"""AWS: the proxy's policy (config.yaml) as its SSM parameter holds it, and the size AWS
allows. One definition for the program (stacks/aws_deployment.py), the check every
command runs (agentctl/stackcheck.py) and the proxy's policy-pull, which unpacks it
(roles/proxy/templates/policy-pull.py.j2)."""
from __future__ import annotations

import base64
import gzip

# bytes of a parameter's value: Standard tier (free), Advanced tier (AWS SSM quotas)
SSM_STANDARD_LIMIT, SSM_ADVANCED_LIMIT = 4096, 8192


def pack(config_text: str) -> str:
    """gzip (no timestamp: the same policy is the same value) + base64."""
    return base64.b64encode(gzip.compress(config_text.encode(), compresslevel=9, mtime=0)).decode()


def tier(value: str) -> str:
    """The SSM tier a packed value needs; ValueError past the Advanced tier's 8 KB."""
    size = len(value.encode())
    if size > SSM_ADVANCED_LIMIT:
        raise ValueError(f"the proxy's policy is {size} bytes packed; an SSM parameter holds {SSM_ADVANCED_LIMIT}")
    return "Standard" if size <= SSM_STANDARD_LIMIT else "Advanced"


def packed_policy(deployment, project: str, stack: str) -> str:
    """The proxy's config.yaml for `deployment`, packed, exactly as render writes it."""
    from agentctl.proxyconfig import proxy_config
    from agentctl.render import dump_yaml

    return pack(dump_yaml(proxy_config(deployment, project=project, stack=stack)))
