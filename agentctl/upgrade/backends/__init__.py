"""Snapshot backends of `agentctl snapshot-upgrade` (engine.SnapshotBackend): AWS, Hetzner, the lab."""
