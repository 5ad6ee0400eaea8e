"""authz: an API security gateway for Envoy (ext_authz Policy Enforcement Point)."""

__version__ = "0.1.0"
