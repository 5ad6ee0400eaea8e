"""Fault injection: the service against real dependencies that fail on purpose."""
