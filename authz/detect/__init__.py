"""Behavioural detection (issue 10): features, baselines, detectors and responses.

The request path only builds an :class:`~authz.detect.events.Observation` and
reads verdicts; scoring runs in the background behind a bounded queue. The types
every part shares are in :mod:`authz.detect.events`.
"""
