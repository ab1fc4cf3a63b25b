"""Fixtures for the packaging tests. The helpers live in chart_helpers.py (see there why this directory has no
__init__.py)."""

from __future__ import annotations

import pytest
from chart_helpers import tool


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return tool("kubectl")
