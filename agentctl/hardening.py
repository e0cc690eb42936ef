"""Hardening choices as data: algorithm lists, the operator guard list, upgrade origins.

Kept apart from the templates so tests and the role suites can derive what a host
must show from the same lists that configured it.
"""
from __future__ import annotations

# dev-sec ssh-baseline for OpenSSH >= 8.5 (Debian 12 ships 9.2, Ubuntu 24.04 9.6).
SSH_KEX = ["sntrup761x25519-sha512@openssh.com", "curve25519-sha256", "curve25519-sha256@libssh.org",
           "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512", "diffie-hellman-group-exchange-sha256"]
SSH_CIPHERS = ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com",
               "aes256-ctr", "aes192-ctr", "aes128-ctr"]
SSH_MACS = ["hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com", "umac-128-etm@openssh.com"]
SSH_HOST_KEY_ALGORITHMS = ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]

SSH_USERS = ["admin", "operator"]

# fail2ban's sshd jail: this many failures within FAIL2BAN_FINDTIME bans for
# FAIL2BAN_BANTIME (longer for a repeat offender: bantime.increment).
FAIL2BAN_MAXRETRY = 3
FAIL2BAN_FINDTIME = "10m"
FAIL2BAN_BANTIME = "1h"

# Destructive commands the operator may not run through sudo. A guard against
# accidents, not a boundary: see the sudoers comment.
_BIN = ["/usr/bin", "/bin"]
_SBIN = ["/usr/sbin", "/sbin"]
GUARDED_COMMANDS = (
    [f"{d}/rm {flags} *" for d in _BIN for flags in ("-rf", "-fr", "-r", "-R", "-Rf", "-fR", "--recursive")]
    + [f"{d}/{cmd}" for d in _BIN for cmd in ("dd", "shred")]
    + [f"{d}/{cmd}" for d in _SBIN for cmd in ("mkfs", "mkfs.*", "wipefs", "fdisk", "sfdisk", "parted",
                                                 "shutdown", "reboot", "poweroff", "halt")]
    + [f"{d}/systemctl {verb}*" for d in _BIN for verb in ("poweroff", "reboot", "halt", "kexec")]
)

UPGRADE_ORIGINS = {
    "debian-12": ["origin=Debian,codename=${distro_codename}-security,label=Debian-Security",
                  "origin=Debian,codename=${distro_codename},label=Debian-Security"],
    "ubuntu-24.04": ["origin=${distro_id},archive=${distro_codename}-security",
                     "origin=${distro_id}ESMApps,archive=${distro_codename}-apps-security",
                     "origin=${distro_id}ESM,archive=${distro_codename}-infra-security"],
}


def parse_sshd_effective(output: str) -> dict[str, str]:
    """`sshd -T` output as keyword -> value. sshd prints one line per AllowUsers /
    DenyUsers entry; those are joined with spaces, every other keyword keeps its first."""
    values: dict[str, str] = {}
    for line in output.splitlines():
        key, _, value = line.partition(" ")
        if key in {"allowusers", "denyusers"} and key in values:
            values[key] += f" {value}"
        values.setdefault(key, value)
    return values
