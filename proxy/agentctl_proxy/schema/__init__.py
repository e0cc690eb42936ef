"""The policy schema, defined once for both distributions (docs/policy-schema.md).

The stack model (agentctl/model.py) composes these types into an agent's `egress`
block, and the proxy's config (agentctl_proxy/config.py) into proxy.yaml; whatever
`agentctl render` accepts, `agentctl-proxy check` accepts. Nothing on this package's
import path imports mitmproxy: the operator installs agentctl-proxy without its
`server` extra, and these modules are all it uses of it.
"""
