"""Security groups for the AWS backend: one per (owner, service), opening only SSH to `allowed_cidr`.

Why a module of its own: a group outlives the instances that use it, so it is found again by
name (a concurrent create that won is adopted), tagged with our owner id, and deleted only when
no live instance uses it any more (`sweep_security_groups` runs from the orphan sweeper).

The service port is never opened: the gateway tunnels through SSH. A group found again is
brought back to exactly that one rule (an older tidegate opened the service port; an operator may
have widened it), so adopting a group can never re-expose a replica.
"""

from __future__ import annotations

from typing import Any

from backends.aws.ec2 import LIVE_STATES, Ec2Access, classify, error_code, log, per_region
from backends.base import PermanentError, ReplicaSpec
from backends.cloud.common import OWNER, SERVICE


class AwsNetwork(Ec2Access):
    """The VPC and security group a replica's instance is launched into."""

    def _vpc(self, region: str, subnet: str | None) -> str:
        vpc = per_region(self.settings.vpc_id, region)
        if vpc:
            return vpc
        if subnet:
            return str(
                self._call(region, "describe_subnets", "describe_subnets", SubnetIds=[subnet])["Subnets"][0][
                    "VpcId"
                ]
            )
        vpcs = self._call(
            region, "describe_vpcs", "describe_vpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}]
        )["Vpcs"]
        if not vpcs:
            raise PermanentError(f"aws {region}: no default VPC; set vpc_id/subnet_id in the settings")
        return str(vpcs[0]["VpcId"])

    def _group_name(self, spec: ReplicaSpec) -> str:
        return f"tidegate-{self.owner[:16]}-{spec.service}-ssh"[:255]

    def _ingress(self) -> list[dict[str, Any]]:
        port = self.settings.ssh_port
        cidr = self.settings.allowed_cidr
        return [
            {
                "IpProtocol": "tcp",
                "FromPort": port,
                "ToPort": port,
                "IpRanges": [{"CidrIp": cidr, "Description": "tidegate gateway (SSH tunnel)"}],
            }
        ]

    def _enforce_ingress(self, region: str, group: dict[str, Any]) -> None:
        """Make an existing group's ingress exactly `_ingress()`."""
        want = self._ingress()[0]
        have = group.get("IpPermissions", [])
        ok = len(have) == 1 and (
            have[0].get("IpProtocol"),
            have[0].get("FromPort"),
            have[0].get("ToPort"),
            [r.get("CidrIp") for r in have[0].get("IpRanges", [])],
            have[0].get("Ipv6Ranges", []),
            have[0].get("UserIdGroupPairs", []),
            have[0].get("PrefixListIds", []),
        ) == ("tcp", want["FromPort"], want["ToPort"], [self.settings.allowed_cidr], [], [], [])
        if ok:
            return
        group_id = str(group["GroupId"])
        if have:
            self._call(
                region,
                "revoke_security_group_ingress",
                "revoke_security_group_ingress",
                GroupId=group_id,
                IpPermissions=have,
            )
        self._call(
            region,
            "authorize_security_group_ingress",
            "authorize_security_group_ingress",
            GroupId=group_id,
            IpPermissions=self._ingress(),
        )
        log.info("aws %s: security group %s reset to SSH from %s only", region, group_id, self.settings.allowed_cidr)

    def _security_group(self, region: str, spec: ReplicaSpec, subnet: str | None) -> str:
        from botocore.exceptions import ClientError

        vpc = self._vpc(region, subnet)
        name = self._group_name(spec)
        filters = [{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}]
        existing = self._call(region, "describe_security_groups", "describe_security_groups", Filters=filters)
        if existing["SecurityGroups"]:
            self._enforce_ingress(region, existing["SecurityGroups"][0])
            return str(existing["SecurityGroups"][0]["GroupId"])
        tags = [
            {"Key": OWNER, "Value": self.owner},
            {"Key": SERVICE, "Value": spec.service},
            {"Key": "Name", "Value": name},
        ]
        try:
            created = self._client(region).create_security_group(
                GroupName=name,
                Description=f"tidegate service {spec.service}: SSH tunnel from {self.settings.allowed_cidr}",
                VpcId=vpc,
                TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}],
            )
        except ClientError as e:
            if error_code(e)[0] == "InvalidGroup.Duplicate":  # a concurrent create won
                again = self._call(
                    region, "describe_security_groups", "describe_security_groups", Filters=filters
                )
                self._enforce_ingress(region, again["SecurityGroups"][0])
                return str(again["SecurityGroups"][0]["GroupId"])
            raise classify(e, f"aws {region} create_security_group") from e
        group_id = str(created["GroupId"])
        self._call(
            region,
            "authorize_security_group_ingress",
            "authorize_security_group_ingress",
            GroupId=group_id,
            IpPermissions=self._ingress(),
        )
        return group_id

    def sweep_security_groups(self) -> list[str]:
        """Delete our tagged security groups that no live instance uses; returns their ids."""
        deleted = []
        for region in self.settings.regions:
            groups = self._call(
                region, "describe_security_groups", "describe_security_groups", Filters=self._owned_filter()
            )["SecurityGroups"]
            for group in groups:
                if self._delete_group_if_unused(region, str(group["GroupId"])):
                    deleted.append(str(group["GroupId"]))
        return deleted

    def _delete_group_if_unused(self, region: str, group_id: str) -> bool:
        from botocore.exceptions import ClientError

        users = self._instances(
            region,
            [
                {"Name": "instance.group-id", "Values": [group_id]},
                {"Name": "instance-state-name", "Values": LIVE_STATES},
            ],
        )
        if users:
            return False
        try:
            self._client(region).delete_security_group(GroupId=group_id)
        except ClientError as e:
            code = error_code(e)[0]
            if code == "InvalidGroup.NotFound":
                return False
            if code == "DependencyViolation":  # an instance is still shutting down; gc retries
                return False
            raise classify(e, f"aws {region} delete_security_group") from e
        log.info("aws %s: deleted security group %s", region, group_id)
        return True
