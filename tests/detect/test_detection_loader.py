"""The policy's detection section: defaults, values, and bad input located precisely."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from authz.errors import PolicyError
from authz.policy.loader import load_policy

HEAD = """\
providers:
  keys:
    type: api_key
    keys:
      - {id: k1, sha256: cdb261f25818c0b9927e93c353bdc05dddfa18e4ede433d264e910cc94b47aeb, owner: team, expires: "2030-01-01"}
routes:
  - {name: get-order, path: "/v1/orders/{id}", methods: [GET], providers: [keys]}
  - {name: backup, path: /admin/backup.zip, methods: [GET], providers: [keys]}
"""


def write(tmp_path: Path, detection: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(HEAD + textwrap.dedent(detection), encoding="utf-8")
    return path


def at(path: Path, needle: str) -> str:
    text = path.read_text("utf-8")
    index = text.index(needle)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"{path}:{line}:{column}"


def problems(path: Path) -> list[tuple[str, str]]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value.problems


def test_no_section_no_detection(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, "")).detection is None


def test_an_empty_section_takes_every_default(tmp_path: Path) -> None:
    config = load_policy(write(tmp_path, "detection: {}\n")).detection
    assert config is not None
    assert (config.mode, config.warmup, config.queue) == ("monitor", 60.0, 65_536)
    assert config.credential_stuffing.failures == 20
    assert config.token_sharing.response == "revoke"


def test_a_full_section(tmp_path: Path) -> None:
    config = load_policy(
        write(
            tmp_path,
            """\
            detection:
              mode: enforce
              warmup: 2m
              queue: 1024
              interval: 150ms
              tables: {callers: 5000, tokens: 2000, routes: 50}
              detectors:
                credential_stuffing: {response: block, target: address, ttl: 15m, window: 60s, failures: 10, distinct_identities: 5}
                enumeration: {response: throttle, ttl: 10m, distinct_ids: 30, window: 60s, mode: monitor}
                token_sharing: {response: revoke, addresses: 6, window: 10m}
                data_volume: {response: log, min_bytes: 1000}
                honeypot: {response: block, target: address, ttl: 1h, paths: ["/.env", "/wp-login.php", "/.git/**"]}
            """,
        )
    ).detection
    assert config is not None
    assert (config.warmup, config.queue, config.interval) == (120.0, 1024, 0.15)
    assert config.tables.callers == 5000
    assert config.credential_stuffing.failures == 10 and config.credential_stuffing.ttl == 900
    assert config.mode_of(config.enumeration) == "monitor"
    assert config.mode_of(config.token_sharing) == "enforce"
    assert config.token_sharing.window == 600
    assert config.honeypot.paths == ("/.env", "/wp-login.php", "/.git/**")


@pytest.mark.parametrize(
    ("detection", "needle", "message"),
    [
        (
            "detection:\n  detectors:\n    honeypot: {paths: [/.env], respnse: block}\n",
            "respnse",
            "$.detection.detectors.honeypot: unknown field 'respnse'",
        ),
        (
            "detection:\n  detectors:\n    token_sharing: {response: ban}\n",
            "ban",
            "$.detection.detectors.token_sharing.response: must be one of",
        ),
        (
            "detection:\n  warmup: soon\n",
            "soon",
            "$.detection.warmup: invalid value",
        ),
        (
            "detection:\n  detectors:\n    credential_stuffing: {response: revoke, target: address}\n",
            "revoke, target",
            "$.detection.detectors.credential_stuffing.response: revoke applies to a credential",
        ),
        (
            "detection:\n  detectors:\n    enumeration: {window: 5s}\n",
            "5s",
            "$.detection.detectors.enumeration.window: a window shorter than the baselines' bucket",
        ),
        (
            "detection:\n  detectors:\n    honeypot: {paths: [/admin/*.zip]}\n",
            "/admin/*.zip",
            "$.detection.detectors.honeypot.paths[0]: '/admin/*.zip' matches route 'backup'",
        ),
        (
            "detection:\n  tables: {callers: 0}\n",
            "0}",
            "$.detection.tables.callers: 0 is less than the minimum of 1",
        ),
    ],
)
def test_bad_detection_is_reported_where_it_is(
    tmp_path: Path, detection: str, needle: str, message: str
) -> None:
    path = write(tmp_path, detection)
    found = problems(path)
    assert any(where == at(path, needle) and text.startswith(message) for where, text in found), (
        found
    )


def test_the_readme_section_loads_and_is_the_defaults(tmp_path: Path) -> None:
    import dataclasses
    import re

    from authz.policy.detection_config import DetectionConfig

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Behavioural detection", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    path = tmp_path / "readme.yaml"
    path.write_text(
        "routes:\n  - {name: h, path: /healthz, methods: [GET], public: true}\n" + block.group(1)
    )
    config = load_policy(path).detection
    assert config is not None
    defaults = DetectionConfig()
    for field in dataclasses.fields(DetectionConfig):
        ours, default = getattr(config, field.name), getattr(defaults, field.name)
        if field.name == "location":
            continue
        if dataclasses.is_dataclass(ours):
            for sub in dataclasses.fields(ours):
                if sub.name not in ("location", "paths"):
                    assert getattr(ours, sub.name) == getattr(default, sub.name), (
                        field.name,
                        sub.name,
                    )
        else:
            assert ours == default, field.name
