"""AWS: an EBS snapshot of the agent instance's root volume; rollback replaces the root volume.

The calls are boto3's public EC2 client (botocore's service model for ec2 2016-11-15):
CreateSnapshot with TagSpecifications, the `snapshot_completed` waiter, and for the
rollback CreateReplaceRootVolumeTask + DescribeReplaceRootVolumeTasks. Where that API
is not available (an endpoint that does not implement it, an instance type it does not
support) the rollback does what it does by hand: stop, a volume from the snapshot in
the instance's zone, detach the old root, attach the new one at the root device, start.
The old root volume is kept, tagged with the run that replaced it: a rollback never
deletes data; remove it once you have looked.

The agent instance is found by the tags the Pulumi program gives it
(stacks/aws_deployment.py `_tags`: agentctl:stack, agentctl:role = agent-<name>).
Every snapshot carries `agentctl:managed-by`; listing and deleting require it.
"""
from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError
from botocore.parsers import ResponseParserError  # raised for a non-XML answer (botocore/parsers.py)

from agentctl.errors import AgentctlError
from agentctl.upgrade.engine import PROJECT, Snapshot

PROJECT_TAG = "agentctl:managed-by"
PREFIX = "agentctl:"
# Error codes meaning "this API cannot do it here": fall back to the manual swap.
NO_REPLACE_ROOT = {"InvalidAction", "UnsupportedOperation", "NotImplemented", "OperationNotPermitted",
                   "InvalidParameterValue", "UnknownOperation"}


class AwsError(AgentctlError):
    exit_code = 1


class AwsBackend:
    def __init__(self, ec2: Any, stack: str, delay: float = 15, max_attempts: int = 240):
        self.ec2, self.stack = ec2, stack
        self.waiter = {"Delay": delay, "MaxAttempts": max_attempts}  # up to an hour for a big volume

    # --- lookups ---------------------------------------------------------------------

    def instance(self, host: str) -> dict[str, Any]:
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": "tag:agentctl:stack", "Values": [self.stack]},
            {"Name": "tag:agentctl:role", "Values": [f"agent-{host}"]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
        found = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        if len(found) != 1:
            raise AwsError(f"aws: {len(found)} instances tagged agentctl:stack={self.stack}, "
                           f"agentctl:role=agent-{host}; expected exactly one")
        return found[0]

    def root_volume(self, inst: dict[str, Any]) -> str | None:
        for m in inst.get("BlockDeviceMappings", []):
            if m["DeviceName"] == inst["RootDeviceName"]:
                return m["Ebs"]["VolumeId"]
        return None

    def _tags(self, tags: dict[str, str]) -> list[dict[str, str]]:
        return [{"Key": PROJECT_TAG, "Value": PROJECT}] + [{"Key": PREFIX + k, "Value": v} for k, v in tags.items()]

    # --- SnapshotBackend ---------------------------------------------------------------

    def snapshot(self, host: str, tags: dict[str, str]) -> str:
        inst = self.instance(host)
        volume = self.root_volume(inst)
        if volume is None:
            raise AwsError(f"aws: {inst['InstanceId']} has no root volume attached")
        snap = self.ec2.create_snapshot(
            VolumeId=volume, Description=f"agentctl snapshot-upgrade {host} {tags['from']} -> {tags['to']}",
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": self._tags(tags)}])
        return snap["SnapshotId"]

    def wait(self, snapshot_id: str) -> None:
        self.ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=self.waiter)

    def list_snapshots(self, host: str) -> list[Snapshot]:
        pages = self.ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=[
            {"Name": f"tag:{PROJECT_TAG}", "Values": [PROJECT]},
            {"Name": "tag:agentctl:stack", "Values": [self.stack]},
            {"Name": "tag:agentctl:host", "Values": [host]}])
        out = []
        for page in pages:
            for s in page["Snapshots"]:
                tags = {t["Key"]: t["Value"] for t in s.get("Tags", [])}
                if (tags.get(PROJECT_TAG), tags.get("agentctl:stack"), tags.get("agentctl:host")) != \
                        (PROJECT, self.stack, host):
                    continue  # the filters again, here: retention must never see anything else
                out.append(Snapshot(s["SnapshotId"], host, tags.get("agentctl:run-id", ""),
                                    s["StartTime"].strftime("%Y%m%dT%H%M%SZ")))
        return out

    def delete(self, snapshot_id: str) -> None:
        # Checked again here, not only in the listing: nothing without our tag is ever deleted.
        [snap] = self.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        tags = {t["Key"]: t["Value"] for t in snap.get("Tags", [])}
        if tags.get(PROJECT_TAG) != PROJECT or tags.get("agentctl:stack") != self.stack:
            raise AwsError(f"aws: refusing to delete {snapshot_id}: it is not tagged {PROJECT_TAG}={PROJECT}, "
                           f"agentctl:stack={self.stack}")
        self.ec2.delete_snapshot(SnapshotId=snapshot_id)

    def restore(self, host: str, snapshot_id: str) -> None:
        inst = self.instance(host)
        if self._replaced_from(inst, snapshot_id):
            self._start(inst["InstanceId"])  # a resumed rollback that had swapped the volume already
            return
        try:
            self._replace_root_volume(inst["InstanceId"], snapshot_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in NO_REPLACE_ROOT:
                raise
            self._swap_root_volume(host, inst, snapshot_id)
        except ResponseParserError:
            # The endpoint answered something that is not EC2's XML: it does not have the
            # API (moto, some partitions). Nothing was started, so swap by hand.
            self._swap_root_volume(host, inst, snapshot_id)

    # --- the two ways back ---------------------------------------------------------------

    def _replace_root_volume(self, instance_id: str, snapshot_id: str) -> None:
        task = self.ec2.create_replace_root_volume_task(
            InstanceId=instance_id, SnapshotId=snapshot_id,
            TagSpecifications=[{"ResourceType": "replace-root-volume-task",
                                "Tags": [{"Key": PROJECT_TAG, "Value": PROJECT}]}])["ReplaceRootVolumeTask"]
        task_id = task["ReplaceRootVolumeTaskId"]
        for _ in range(int(self.waiter["MaxAttempts"])):
            [task] = self.ec2.describe_replace_root_volume_tasks(
                ReplaceRootVolumeTaskIds=[task_id])["ReplaceRootVolumeTasks"]
            state = task["TaskState"]
            if state == "succeeded":
                return
            if state in ("failed", "failed-detached", "failing"):
                raise AwsError(f"aws: replace-root-volume task {task_id} on {instance_id} ended {state}")
            time.sleep(self.waiter["Delay"])
        raise AwsError(f"aws: replace-root-volume task {task_id} on {instance_id} still running; run --resume")

    def _replaced_from(self, inst: dict[str, Any], snapshot_id: str) -> bool:
        root = self.root_volume(inst)
        if root is None:
            return False
        [vol] = self.ec2.describe_volumes(VolumeIds=[root])["Volumes"]
        tags = {t["Key"]: t["Value"] for t in vol.get("Tags", [])}
        return vol.get("SnapshotId") == snapshot_id and tags.get("agentctl:restore-of") == snapshot_id

    def _start(self, instance_id: str) -> None:
        self.ec2.start_instances(InstanceIds=[instance_id])
        self.ec2.get_waiter("instance_running").wait(InstanceIds=[instance_id], WaiterConfig=self.waiter)

    def _swap_root_volume(self, host: str, inst: dict[str, Any], snapshot_id: str) -> None:
        """Stop, volume from the snapshot, detach the old root, attach the new, start.
        Each step looks first, so a rollback resumed after a kill picks up where it was."""
        iid, device = inst["InstanceId"], inst["RootDeviceName"]
        zone = inst["Placement"]["AvailabilityZone"]
        self.ec2.stop_instances(InstanceIds=[iid])
        self.ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig=self.waiter)
        old = self.root_volume(self.instance(host))
        vtype = self.ec2.describe_volumes(VolumeIds=[old])["Volumes"][0]["VolumeType"] if old else "gp3"
        new = self._restore_volume(host, snapshot_id, zone, vtype)
        if old and old != new:
            self.ec2.create_tags(Resources=[old], Tags=[{"Key": "agentctl:replaced-by-restore-of",
                                                         "Value": snapshot_id}])
            self.ec2.detach_volume(VolumeId=old, InstanceId=iid)
            self.ec2.get_waiter("volume_available").wait(VolumeIds=[old], WaiterConfig=self.waiter)
        if old != new:
            self.ec2.attach_volume(VolumeId=new, InstanceId=iid, Device=device)
            self.ec2.get_waiter("volume_in_use").wait(VolumeIds=[new], WaiterConfig=self.waiter)
        # As the launched root was: the restored volume goes with the instance.
        self.ec2.modify_instance_attribute(InstanceId=iid, BlockDeviceMappings=[
            {"DeviceName": device, "Ebs": {"DeleteOnTermination": True}}])
        self._start(iid)

    def _restore_volume(self, host: str, snapshot_id: str, zone: str, volume_type: str) -> str:
        found = self.ec2.describe_volumes(Filters=[{"Name": "tag:agentctl:restore-of", "Values": [snapshot_id]},
                                                   {"Name": "snapshot-id", "Values": [snapshot_id]}])["Volumes"]
        if found:
            return found[0]["VolumeId"]
        [snap] = self.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
        vol = self.ec2.create_volume(SnapshotId=snapshot_id, AvailabilityZone=zone, VolumeType=volume_type,
                                     Encrypted=bool(snap.get("Encrypted")),
                                     TagSpecifications=[{"ResourceType": "volume", "Tags": [
                                         {"Key": PROJECT_TAG, "Value": PROJECT},
                                         {"Key": "agentctl:stack", "Value": self.stack},
                                         {"Key": "agentctl:host", "Value": host},
                                         {"Key": "agentctl:restore-of", "Value": snapshot_id}]}])
        self.ec2.get_waiter("volume_available").wait(VolumeIds=[vol["VolumeId"]], WaiterConfig=self.waiter)
        return vol["VolumeId"]
