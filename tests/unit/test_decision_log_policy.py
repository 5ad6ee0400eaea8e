"""The policy's decision_log section: defaults, values, located errors, and the engine
applying it to its sink (at load and on swap)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from authz.audit.sink import JsonLinesSink
from authz.engine import CompiledPolicy, PolicyEngine
from authz.errors import DecisionLogUnavailable, DependencyError, PolicyError
from authz.policy.config import DecisionLogConfig
from authz.policy.loader import load_policy

ROUTES = "routes:\n  - {name: ok, path: /ok, methods: [GET], public: true}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_defaults(tmp_path: Path) -> None:
    config = load_policy(write(tmp_path, ROUTES)).decision_log
    assert config == DecisionLogConfig(on_failure="drop", max_queue=65_536, block_ms=50.0)


def test_values(tmp_path: Path) -> None:
    text = "decision_log: {on_failure: deny, max_queue: 10, block_ms: 0}\n" + ROUTES
    config = load_policy(write(tmp_path, text)).decision_log
    assert (config.on_failure, config.max_queue, config.block_ms) == ("deny", 10, 0)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{on_failure: block}", "$.decision_log.on_failure: must be one of drop, deny"),
        ("{max_queue: 0}", "$.decision_log.max_queue: 0 is less than the minimum of 1"),
        ("{block_ms: 5000}", "$.decision_log.block_ms: 5000 is greater than the maximum of 1000"),
        ("{max_qeue: 10}", "$.decision_log: unknown field 'max_qeue'"),
    ],
)
def test_bad_values_are_located(tmp_path: Path, section: str, message: str) -> None:
    path = write(tmp_path, f"decision_log: {section}\n" + ROUTES)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    (location, got), *_ = err.value.problems
    assert location.startswith(f"{path}:1:") and got.startswith(message), got


def test_reason_is_in_the_tree() -> None:
    exc = DecisionLogUnavailable()
    assert isinstance(exc, DependencyError)
    assert (exc.status, exc.reason) == (503, "decision_log_unavailable")


def test_engine_applies_the_section_to_its_sink(tmp_path: Path) -> None:
    first = CompiledPolicy(load_policy(write(tmp_path, "decision_log: {max_queue: 7}\n" + ROUTES)))
    sink = JsonLinesSink(path=str(tmp_path / "log.jsonl")).open()
    engine = PolicyEngine(first, sink=sink)
    assert sink._max == 7 and not first.log_fails_closed
    text = "decision_log: {on_failure: deny, max_queue: 9, block_ms: 5}\n" + ROUTES
    second = CompiledPolicy(load_policy(write(tmp_path, text)))
    engine.swap(second)
    assert (sink._max, sink._block, second.log_fails_closed) == (9, 0.005, True)
    sink.close()
