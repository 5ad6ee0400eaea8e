"""The local demo stack: a dev issuer, an echo upstream, the service and Envoy."""
