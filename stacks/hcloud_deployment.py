"""Hetzner Cloud: the proxy has the only public address; agents live on the private
network with no public IPv4 or IPv6 at all (Hetzner has no route out without one).

hcloud ids are integers in the SDK, resource ids are strings: convert with `_int_id`.
Child names are this component's API (`f"{name}-..."`).
"""
from __future__ import annotations

import pulumi
import pulumi_hcloud as hcloud

from agentctl import hcloud_catalog
from agentctl.secrets import CA_KEY_PATH, PROXY_CONFIG_PATH, TAILSCALE_AUTHKEY_PATH, secret_file_path
from agentctl.userdata import hcloud_user_data
from agentctl_stacks import policy
from agentctl_stacks.args import DeploymentArgs
from agentctl_stacks.proxy_secrets import ProxySecrets

PROXY_USER = "agentctl-proxy"  # owner of the proxy's secret files (roles/proxy service unit)
ADMIN_USER = "admin"
SECRET_MODE = "0600"
# The proxy reloads its policy on SIGHUP (ExecReload); not running yet: nothing to do.
# The proxy reloads its policy on SIGHUP (ExecReload); on first boot it waits for this
# push (its policy is not in user-data) and is started here.
RELOAD_PROXY = "systemctl reload-or-restart agentctl-proxy.service"


def _int_id(resource: pulumi.CustomResource) -> pulumi.Output[int]:
    return resource.id.apply(int)


class HcloudDeployment(pulumi.ComponentResource):
    def __init__(self, name: str, args: DeploymentArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("agentctl:hcloud:Deployment", name, None, opts)
        self._name, self._args, self._d = name, args, args.deployment
        self._child = pulumi.ResourceOptions(parent=self)
        self._network()
        self._firewall()
        self._servers()
        self._push_secrets()
        self.register_outputs(self.outputs())

    def _opts(self, **kw) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions.merge(self._child, pulumi.ResourceOptions(**kw))

    def _labels(self, role: str) -> dict[str, str]:
        return {"agentctl-stack": self._args.stack, "agentctl-role": role}

    def _network(self) -> None:
        n, d = self._name, self._d
        zone = hcloud_catalog.network_zone(d.region)
        self.network = hcloud.Network(f"{n}-network", ip_range=d.network.cidr, labels=self._labels("network"),
                                      opts=self._opts())
        self.subnets = [hcloud.NetworkSubnet(f"{n}-{role}-subnet", network_id=_int_id(self.network), type="cloud",
                                             network_zone=zone, ip_range=str(cidr), opts=self._opts())
                        for role, cidr in (("proxy", d.proxy_subnet), ("agent", d.agent_subnet))]

    def _firewall(self) -> None:
        # Applied at creation through firewall_ids, so no host ever boots unfiltered.
        self.firewall = hcloud.Firewall(f"{self._name}-firewall", rules=policy.hcloud_firewall_rules(self._d),
                                        labels=self._labels("firewall"), opts=self._opts())
        self._admin_keys()

    def _admin_keys(self) -> None:
        """Hetzner mails a root password for servers created without an SSH key, and
        refuses a second key with a fingerprint the project already has. So an admin key
        already in the project (uploaded by hand, or by another stack) is used as it is,
        by id; only the others are created, labelled with this stack, and those stay
        this stack's on every later `up` (the look-up skips keys with our label)."""
        self.ssh_keys, self.ssh_key_ids = [], []
        if self._d.hcloud_ssh_keys:
            # Named keys already in the project: used as they are, nothing created.
            for ref in self._d.hcloud_ssh_keys:
                by = "fingerprint" if policy.HCLOUD_FINGERPRINT.match(ref) else "name"
                found = hcloud.get_ssh_key_output(**{by: ref}, opts=pulumi.InvokeOutputOptions(parent=self))
                self.ssh_key_ids.append(found.id.apply(str))
            return
        existing = policy.hcloud_existing_keys(hcloud.get_ssh_keys().ssh_keys or [], self._args.stack)
        for i, key in enumerate(self._d.admin_ssh_keys):
            found = existing.get(policy.ssh_md5_fingerprint(key))
            if found is not None:
                self.ssh_key_ids.append(str(found))
                continue
            created = hcloud.SshKey(f"{self._name}-admin-key-{i}", public_key=key, labels=self._labels("admin"),
                                    opts=self._opts())
            self.ssh_keys.append(created)
            self.ssh_key_ids.append(created.id)

    def _server(self, role: str, host_name: str, size: str | None, ip: str, public_nets: list, extra_deps: list,
                **opts):
        d = self._d
        # A server holds a fixed network address (and the proxy its Primary IP): its
        # replacement can be created only once the old one is gone.
        return hcloud.Server(
            f"{self._name}-{role}", server_type=size or hcloud_catalog.default_server_type(d.region),
            image=d.image or d.distro, location=d.region, ssh_keys=self.ssh_key_ids,
            user_data=hcloud_user_data(self._args.host(host_name).user_data),
            public_nets=public_nets, networks=[{"network_id": _int_id(self.network), "ip": ip}],
            firewall_ids=[_int_id(self.firewall)], labels=self._labels(role),
            opts=self._opts(depends_on=[*self.subnets, *extra_deps], delete_before_replace=True, **opts))

    def _servers(self) -> None:
        n, d = self._name, self._d
        # A Primary IP outlives the server: rebuilds keep the address admins and DNS use.
        self.primary_ip = hcloud.PrimaryIp(f"{n}-proxy-ip", type="ipv4", assignee_type="server", auto_delete=False,
                                           location=d.region, labels=self._labels("proxy"), opts=self._opts())
        # The proxy's policy (every agent's grants) is not in its user-data: it is pushed
        # with its secrets and reloaded (SIGHUP), so adding an agent or editing a rule
        # does not rebuild the proxy. Any change to its user-data replaces it (delete
        # first) with that user-data: no ignoreChanges, whose state value a replacement
        # would inherit (policy.agent_user_data_ignored).
        self.proxy = self._server("proxy", d.proxy.name, d.proxy.size, d.proxy_ip,
                                  [{"ipv4_enabled": True, "ipv4": _int_id(self.primary_ip), "ipv6_enabled": False}], [])
        # An agent's user-data is read at first boot only (policy.agent_user_data_ignored).
        self.agents = {agent.name: self._server(f"agent-{agent.name}", agent.name, agent.size, d.agent_ip(agent),
                                                policy.agent_public_nets(), [self.proxy],
                                                ignore_changes=policy.agent_user_data_ignored(
                                                    "userData", agent.name, self._args.rebuild))
                       for agent in d.agents}

    def secret_files(self) -> list[dict]:
        """Every file pushed onto the proxy: path, owner, mode and (secret) content."""
        a, d = self._args, self._d
        files = [{"path": secret_file_path(agent.name, secret), "owner": PROXY_USER, "mode": SECRET_MODE,
                  "content": value} for agent, secret, value in a.agent_secrets()]
        files.append({"path": CA_KEY_PATH, "owner": PROXY_USER, "mode": SECRET_MODE, "content": a.ca.key_pem})
        # Not a secret, but it travels the same way so a policy change needs no rebuild.
        files.append({"path": PROXY_CONFIG_PATH, "owner": f"root:{PROXY_USER}", "mode": "0640",
                      "content": pulumi.Output.from_input(a.proxy.proxy_config)})
        if d.tailscale:
            # agentctl-tailscale-up.path waits for this file; the unit reads it as root and shreds it.
            files.append({"path": TAILSCALE_AUTHKEY_PATH, "owner": "root", "mode": SECRET_MODE,
                          "content": a.secrets[d.tailscale.auth_key.config]})
        return files

    def _push_secrets(self) -> None:
        self.secrets = ProxySecrets(f"{self._name}-proxy-secrets", host=self.primary_ip.ip_address,
                                    server_id=self.proxy.id, user=ADMIN_USER, files=self.secret_files(),
                                    after=RELOAD_PROXY, opts=self._opts(depends_on=[self.proxy]))

    def outputs(self) -> dict[str, pulumi.Input]:
        d, a = self._d, self._args
        proxy_ip = self.primary_ip.ip_address
        return {
            "proxyPublicIp": proxy_ip,
            "proxyPrivateIp": d.proxy_ip,
            "agentPrivateIps": {agent.name: d.agent_ip(agent) for agent in d.agents},
            "caFingerprintSha256": a.ca.fingerprint_sha256,
            "proxyHostKey": self.secrets.hostKey,
            "ssh": {d.proxy.name: pulumi.Output.concat("ssh ", ADMIN_USER, "@", proxy_ip),
                    **{agent.name: pulumi.Output.concat("ssh -J ", ADMIN_USER, "@", proxy_ip, " ",
                                                        ADMIN_USER, "@", d.agent_ip(agent)) for agent in d.agents}},
        }
