"""The control plane: ``authz.v1.Admin`` on a port of its own, authenticated.

``authz serve --control HOST:PORT`` (default 127.0.0.1:9193, ``off``: none) serves
the inventory, explain and the counters, with gRPC health and reflection, never on
the ext_authz port. Every call but health authenticates (mTLS against a configured
CA, or a bearer token from a file); on a loopback address with neither, the service
writes a token of its own to the runtime directory, where the CLI finds it; any
other address without a credential is refused at start (:mod:`.auth`). Every call
is logged on ``authz.control`` with its caller (:mod:`.server`). With ``--workers
N`` the supervisor answers for all workers, merging what each one's private socket
says (:mod:`.merge`).

Modules, by job: :mod:`.options` (flags), :mod:`.auth` (credentials, identities),
:mod:`.servicer` (one process's Admin), :mod:`.merge` (pure merging),
:mod:`.server` (the gated server, :class:`~.server.ControlPlane`), :mod:`.workers`
(the ``--workers`` fan-out), :mod:`.client` (connecting with credentials), :mod:`.render` (tables,
JSON, OpenAPI skeleton, explain traces), :mod:`.commands` (``authz inventory``,
``authz explain --control``).
"""
