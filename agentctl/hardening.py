"""Hardening choices as data: algorithm lists, the operator guard list, upgrade origins.

Kept apart from the templates so tests and the role suites can derive what a host
must show from the same lists that configured it.
"""
from __future__ import annotations

# The dev-sec lists for OpenSSH >= 8.5 (Debian 12 ships 9.2, Ubuntu 24.04 9.6), as
# ssh-baseline checks them (libraries/ssh_crypto.rb: valid_kexs, valid_ciphers,
# valid_macs) and ansible-collection-hardening sets them (roles/ssh_hardening/vars/
# main.yml: ssh_kex_85_default, ssh_ciphers_66_default, ssh_macs_76_default).
# KEX and ciphers: exactly dev-sec's.
SSH_KEX = ["sntrup761x25519-sha512@openssh.com", "curve25519-sha256@libssh.org", "diffie-hellman-group-exchange-sha256"]
SSH_CIPHERS = ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com",
               "aes256-ctr", "aes192-ctr", "aes128-ctr"]
# MACs: dev-sec's first three. Deviation, on purpose: dev-sec also allows hmac-sha2-512
# and hmac-sha2-256, the encrypt-and-MAC forms (the MAC over the plaintext), which
# ssh-audit flags. Clients need no MAC with the AEAD ciphers listed first, and the ETM
# forms otherwise (OpenSSH since 6.2; the role suites' paramiko connects with this set).
# ssh-baseline's MAC controls report this one difference (waived: roles/baseline-waivers.yaml).
SSH_MACS = ["hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com", "umac-128-etm@openssh.com"]
DEV_SEC_MACS = [*SSH_MACS, "hmac-sha2-512", "hmac-sha2-256"]
# Not part of dev-sec's lists (it checks the HostKey files, rsa ecdsa ed25519): ours
# offers ed25519 and RSA with SHA-2 only.
SSH_HOST_KEY_ALGORITHMS = ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]

SSH_USERS = ["admin", "operator"]

# sshd's effective configuration for an admin login (what the role suites read).
SSHD_T = "sshd -T -C user=admin,host=verifier,addr=192.0.2.1"

# fail2ban's sshd jail: this many failures within FAIL2BAN_FINDTIME bans for
# FAIL2BAN_BANTIME (longer for a repeat offender: bantime.increment).
FAIL2BAN_MAXRETRY = 3
FAIL2BAN_FINDTIME = "10m"
FAIL2BAN_BANTIME = "1h"

# login.defs for accounts created later (dev-sec os-05: password aging; UMASK 027,
# which login sessions get through pam_umask). Converge sets each exactly once.
# USERGROUPS_ENAB no: Linux-PAM >= 1.5.3 (Ubuntu 24.04) reads it in pam_umask and then
# copies the owner bits to the group bits for user-private groups, making 027 into 007.
LOGIN_DEFS = {"UMASK": "027", "USERGROUPS_ENAB": "no", "PASS_MAX_DAYS": "365", "PASS_MIN_DAYS": "1", "PASS_WARN_AGE": "7",
              "LOGIN_RETRIES": "5", "LOGIN_TIMEOUT": "60", "HOME_MODE": "0750",
              "SHA_CRYPT_MIN_ROUNDS": "50000", "SHA_CRYPT_MAX_ROUNDS": "100000"}

# Kernel modules a cloud host never uses, each kernel attack surface if loaded on
# demand: storage buses, uncommon network protocols, and filesystems (dev-sec os-10).
# Written `install X /bin/true`, the form dev-sec's os-10 and lynis' NETW-3200 both
# read as disabled (lynis does not recognise /bin/false). vfat stays: a UEFI-booted
# host mounts its EFI system partition with it. squashfs stays on Ubuntu, whose
# snaps are squashfs images.
BLACKLISTED_MODULES = ["usb-storage", "firewire-core", "firewire-ohci", "thunderbolt", "dccp", "sctp", "rds", "tipc",
                       "cramfs", "freevxfs", "jffs2", "hfs", "hfsplus", "udf"]
BLACKLISTED_MODULES_BY_DISTRO = {"debian-12": [*BLACKLISTED_MODULES, "squashfs"], "ubuntu-24.04": BLACKLISTED_MODULES}

# auditd.conf where dev-sec's package-08 (auditd_conf) differs from Debian's and
# Ubuntu's defaults: raw records, and old logs kept, never rotated away. The disk cannot
# fill for it: under 75 MB free auditd warns in syslog, under 50 MB it suspends logging.
AUDITD_CONF = {"log_format": "RAW", "max_log_file_action": "keep_logs", "flush": "INCREMENTAL_ASYNC",
               "space_left": "75", "space_left_action": "SYSLOG", "action_mail_acct": "root",
               "admin_space_left": "50", "admin_space_left_action": "SUSPEND",
               "disk_full_action": "SUSPEND", "disk_error_action": "SUSPEND"}

# The kernel's own mounts that dev-sec os-14..16 want tightened, with the options each
# gets (fstab, applied again at every boot by systemd-remount-fs). Nothing on these
# hosts executes from /dev or /dev/shm.
API_MOUNTS = {"/dev": ("devtmpfs", "nosuid,noexec"), "/dev/shm": ("tmpfs", "nosuid,nodev,noexec")}

# The hardware watchdog systemd arms (seconds): PID 1 silent this long resets the
# machine; a reboot that hangs this long is forced.
HARDWARE_WATCHDOG_SEC = 60
REBOOT_WATCHDOG_SEC = 600

# cron's files and folders, root's alone (dev-sec os-13), where they exist.
CRON_PATHS = ["/etc/crontab", "/etc/cron.hourly", "/etc/cron.daily", "/etc/cron.weekly", "/etc/cron.monthly",
              "/etc/cron.d"]

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
