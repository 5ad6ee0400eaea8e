"""Merging the answers of ``--workers N`` processes into one (pure functions).

Each worker keeps its own inventory and metrics; the control plane asks every
worker and merges:

- **Inventory** endpoints by (declared, method, path, route): counts and outcomes
  summed, ``first_seen`` the earliest, ``last_seen`` the latest, query parameter
  and drift names united (first-seen order, at most :data:`MAX_NAMES`), distinct
  callers from the union of the workers' HyperLogLog sketches (exact as a union;
  the estimate has the sketch's ~6.5% error), falling back to the largest worker
  estimate for a worker that sent no sketch. ``evicted``, ``evicted_requests`` and
  ``unrouted`` are summed, ``capacity`` is per worker (the largest), ``started``
  the earliest, ``generated`` the latest, ``policy_version`` the workers' versions
  (joined with ``,`` while a reload is still reaching every worker).
- **Counters**: series by (name, labels): counter and gauge values summed (a gauge
  such as in-flight requests is a per-process quantity whose sum is the
  service's), histogram counts, sums and buckets summed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from authz.inventory import MAX_NAMES, HyperLogLog
from authz.v1 import admin_pb2


def _unite(target: Any, names: Sequence[str]) -> None:
    present = set(target)
    for name in names:
        if name not in present and len(target) < MAX_NAMES:
            target.append(name)
            present.add(name)


def merge_inventories(parts: Sequence[Any]) -> Any:
    """One :class:`authz.v1.Inventory` from several workers' (see the module doc)."""
    merged = admin_pb2.Inventory(workers=sum(max(p.workers, 1) for p in parts))
    if not parts:
        return merged
    merged.capacity = max(p.capacity for p in parts)
    merged.evicted = sum(p.evicted for p in parts)
    merged.evicted_requests = sum(p.evicted_requests for p in parts)
    merged.unrouted = sum(p.unrouted for p in parts)
    merged.started = min(p.started for p in parts)
    merged.generated = max(p.generated for p in parts)
    versions = list(dict.fromkeys(p.policy_version for p in parts))
    merged.policy_version = ",".join(versions)
    by_key: dict[tuple[bool, str, str, str], Any] = {}
    sketches: dict[tuple[bool, str, str, str], list[bytes]] = {}
    estimates: dict[tuple[bool, str, str, str], int] = {}
    for part in parts:
        for e in part.endpoints:
            key = (e.declared, e.method, e.path, e.route)
            m = by_key.get(key)
            if m is None:
                m = by_key[key] = admin_pb2.Endpoint(
                    method=e.method, path=e.path, declared=e.declared, route=e.route,
                    first_seen=e.first_seen, last_seen=e.last_seen,
                )  # fmt: skip
            else:
                m.first_seen = min(m.first_seen, e.first_seen)
                m.last_seen = max(m.last_seen, e.last_seen)
            m.count += e.count
            for reason, n in e.outcomes.items():
                m.outcomes[reason] += n
            _unite(m.query_parameters, e.query_parameters)
            _unite(m.drift_query_parameters, e.drift_query_parameters)
            _unite(m.drift_body_fields, e.drift_body_fields)
            if e.callers_sketch:
                sketches.setdefault(key, []).append(e.callers_sketch)
            estimates[key] = max(estimates.get(key, 0), e.distinct_callers)
    for key, m in by_key.items():
        estimate = estimates[key]
        if key in sketches:
            union = HyperLogLog.union(sketches[key])
            m.callers_sketch = union.registers
            estimate = max(estimate, union.estimate())
        m.distinct_callers = estimate
    # the order one worker reports: declared first, then by count
    ordered = sorted(by_key.values(), key=lambda e: (not e.declared, -e.count, e.path, e.method))
    merged.endpoints.extend(ordered)
    return merged


def merge_counters(parts: Sequence[Any]) -> Any:
    """One :class:`authz.v1.Counters` from several workers' (see the module doc)."""
    merged = admin_pb2.Counters(workers=sum(max(p.workers, 1) for p in parts))
    by_key: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
    for part in parts:
        for s in part.series:
            labels = tuple((h.name, h.value) for h in s.labels)
            key = (s.name, labels)
            m = by_key.get(key)
            if m is None:
                m = by_key[key] = admin_pb2.Series()
                m.CopyFrom(s)
                continue
            if m.kind != s.kind:
                raise ValueError(f"metric {s.name} is a {m.kind} and a {s.kind}")
            m.value += s.value
            m.count += s.count
            m.sum += s.sum
            if list(m.bounds) == list(s.bounds) and len(m.bucket_counts) == len(s.bucket_counts):
                for i, n in enumerate(s.bucket_counts):
                    m.bucket_counts[i] += n
            else:  # buckets changed between versions: keep count and sum only
                del m.bounds[:]
                del m.bucket_counts[:]
    merged.series.extend(by_key[k] for k in sorted(by_key))
    return merged
