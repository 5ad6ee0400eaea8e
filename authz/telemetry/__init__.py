"""Telemetry seams: metrics (:mod:`.metrics`); exporters come later."""
