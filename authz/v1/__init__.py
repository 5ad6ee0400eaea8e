"""Generated modules of protos/authz/v1 (scripts/gen-protos); do not edit."""
