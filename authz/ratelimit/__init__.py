"""Rate limits, concurrency caps and priority load shedding.

- :mod:`.base`: the store protocol (items in, outcomes out) and GCRA itself.
- :mod:`.memory`: the in-process store, bounded (least recently used evicted).
- :mod:`.redis_store`: one atomic Lua script per decision, shared by every replica.
- :mod:`.batched`: local counting against Redis with periodic sync (bounded error).
- :mod:`.keys`: bucket keys from a request (client address through trusted hops).
- :mod:`.overload`: decisions in flight and the operator's overload signal.
- :mod:`.stage`: the stages that join the engine (:data:`authz.pipeline.STAGES`).
"""
