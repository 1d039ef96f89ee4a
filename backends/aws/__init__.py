"""The AWS backend (boto3 EC2): the Backend (backend), EC2 calls and error classes (ec2), and the
VPC/security-group setup (network).
"""

# What other units may import (docs/architecture.md, the public-surface rule); the rest is private.
PUBLIC_MODULES: tuple[str, ...] = ("backend", "catalog_refresh")
