"""The detectors a policy's ``detection:`` section builds, and when a reload may keep
their state (same detectors, windows and baselines: only thresholds changed)."""

from __future__ import annotations

from authz.detect.detectors import Detector
from authz.detect.detectors.credential_stuffing import CredentialStuffing
from authz.detect.detectors.data_volume import DataVolume
from authz.detect.detectors.enumeration import Enumeration
from authz.detect.detectors.honeypot import Honeypot
from authz.detect.detectors.token_sharing import TokenSharing
from authz.policy.detection_config import DetectionConfig, DetectorConfig
from authz.telemetry.metrics import Metrics


def build_detectors(config: DetectionConfig, metrics: Metrics) -> tuple[Detector, ...]:
    """The enabled detectors, in the order the scorer runs them."""
    tables = config.tables
    built: list[Detector] = []
    if config.honeypot.enabled and config.honeypot.paths:
        built.append(Honeypot(config.honeypot, metrics))
    if config.credential_stuffing.enabled:
        built.append(CredentialStuffing(config.credential_stuffing, metrics, tables.callers))
    if config.enumeration.enabled:
        built.append(
            Enumeration(
                config.enumeration,
                metrics,
                tables.callers,
                bucket=config.bucket,
                alpha=config.alpha,
            )
        )
    if config.token_sharing.enabled:
        built.append(TokenSharing(config.token_sharing, metrics, tables.tokens, tables.callers))
    if config.data_volume.enabled:
        built.append(
            DataVolume(
                config.data_volume,
                metrics,
                tables.callers,
                bucket=config.bucket,
                alpha=config.alpha,
            )
        )
    return tuple(built)


def configs_by_name(config: DetectionConfig) -> dict[str, DetectorConfig]:
    return {
        "honeypot": config.honeypot,
        "credential_stuffing": config.credential_stuffing,
        "enumeration": config.enumeration,
        "token_sharing": config.token_sharing,
        "data_volume": config.data_volume,
    }


def same_shape(old: DetectionConfig, new: DetectionConfig) -> bool:
    """Whether a reload may keep the detectors' state (same detectors, same windows)."""
    return (
        old.bucket == new.bucket
        and old.alpha == new.alpha
        and tuple(getattr(getattr(old, n), "window", 0) for n in _WINDOWED)
        == tuple(getattr(getattr(new, n), "window", 0) for n in _WINDOWED)
        and tuple(getattr(old, n).enabled for n in _ALL)
        == tuple(getattr(new, n).enabled for n in _ALL)
        and old.honeypot.paths == new.honeypot.paths
    )


_WINDOWED = ("credential_stuffing", "enumeration", "token_sharing", "data_volume")
_ALL = ("honeypot", *_WINDOWED)
