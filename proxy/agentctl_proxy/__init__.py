"""agentctl-proxy: the egress proxy of an agentctl deployment."""

__version__ = "0.1.0"
