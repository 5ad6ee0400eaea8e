"""Fault tests: the ``slow`` marker (a few seconds each; deselect with ``-m 'not slow'``)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a fault test that takes several seconds")
