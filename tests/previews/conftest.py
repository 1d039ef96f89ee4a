"""Fixtures for the previews tests (helpers live in previews_support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from previews_support import FakeGitHub, serve_github

from reconciler.previews.github import GitHubClient


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, GitHubClient]]:
    with serve_github() as served:
        yield served
