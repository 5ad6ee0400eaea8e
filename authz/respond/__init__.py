"""Automatic responses (issue 10): blocks, revocations, throttles and step-ups in force.

- :mod:`.table`: the bounded table of entries and its per-kind lookup indexes;
- :mod:`.targets`: what an entry names (address, /24 or /64, subject, API key,
  token) and how a request is matched against it;
- :mod:`.enforcer`: the :class:`~authz.detect.events.ActionSink` that applies
  detectors' actions and operators' changes, and checks requests in O(1);
- :mod:`.redis_sync`: the mirror kept in step with Redis across workers and replicas;
- :mod:`.stage`: the two stages (``request`` and ``authorize`` phases).
"""
