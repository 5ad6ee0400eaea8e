"""Response feedback from Envoy (issue 10 item 4).

ext_authz never sees the upstream's answer; Envoy's access log does. The service
implements Envoy's gRPC access-log service (:mod:`authz.transport.als_server`), and
every HTTP log entry becomes a :class:`~authz.detect.events.ResponseObservation`,
joined to its decision by the decision id the ext_authz answer left in Envoy's
dynamic metadata (``""`` for a public route that skipped the check), and published
on the process's :class:`~authz.detect.events.ResponseHub` for detectors and
adaptive shaping.

- :mod:`.feed`: :class:`~.feed.ResponseFeed`, the bounded queue between the stream
  and the hub (a runtime: ``start``/``aclose``). A full queue drops and counts; the
  feed never touches a decision, so losing it degrades detection, never decisions.
"""
