"""Hypothesis profiles of the fuzz tests.

``ci`` (the default) keeps each property to a few seconds so that a short run of
every target is part of the suite; ``long`` (``HYPOTHESIS_PROFILE=long``) runs a
hundred times as many examples per property, for a longer fuzzing session.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

from fuzz.targets import Chooser

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
_SCALE = {"ci": 1, "long": 100}

_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", **_COMMON)
settings.register_profile("long", **_COMMON)
settings.load_profile(PROFILE)


def budget(examples: int) -> settings:
    """Settings for one property: ``examples`` under ci, scaled up under long."""
    return settings(max_examples=examples * _SCALE.get(PROFILE, 1), deadline=None)


class DataChooser(Chooser):
    """A Chooser over hypothesis' ``data`` (so failures shrink)."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self._data = data
        self._st = st

    def integer(self, lo: int, hi: int) -> int:
        return int(self._data.draw(self._st.integers(lo, hi)))

    def blob(self, n: int) -> bytes:
        return bytes(self._data.draw(self._st.binary(max_size=n)))

    def text(self, n: int) -> str:
        return str(self._data.draw(self._st.text(max_size=n)))
