"""Which distinct-count sketch detection uses: cost per add and error, one run.

Compares, on the same stream of 10,000 distinct short strings (each added twice):

- ``authz.detect.sketch.Distinct`` (ours: exact up to 24 items, then 128 one-byte
  registers fed by Python's own string hash) and its bare ``HyperLogLog``;
- ``datasketch.HyperLogLog`` (p=7, SHA-1, numpy registers) and
  ``hyperloglog.HyperLogLog`` (error 0.1), from PyPI, if installed;
- Redis ``PFADD`` / ``PFCOUNT`` on a redis-server started here (one command per
  add, as a scorer would do; and pipelined by 100, its best case).

Prints µs per add, the mean relative error over 10 streams at 10,000 and at 20
distinct items (where the detectors' thresholds are; Redis: one stream), and the
bytes of one sketch.

    python bench/sketch_choice.py [--items 10000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authz.detect.sketch import Distinct, HyperLogLog


def _time(add: Callable[[str], Any], items: list[str]) -> float:
    started = time.perf_counter()
    for item in items:
        add(item)
    return (time.perf_counter() - started) / len(items) * 1e6


def _error(estimate: float, n: int) -> float:
    return abs(estimate - n) / n


def mean_error(
    make: Callable[[], Any], add: Callable[[Any, str], Any], count: Callable[[Any], float], n: int
) -> float:
    """Mean relative error over 10 independent streams of ``n`` distinct items."""
    errors = []
    for trial in range(10):
        sketch = make()
        for i in range(n):
            add(sketch, f"t{trial}-{i}")
        errors.append(_error(count(sketch), n))
    return sum(errors) / len(errors)


def row(name: str, us: float, err_large: float, err_small: float, size: str) -> None:
    print(f"{name:34} {us:9.2f} {err_large * 100:10.1f}% {err_small * 100:9.1f}%  {size}")


def ours(items: list[str], small: list[str]) -> None:
    n = len(items) // 2
    d = Distinct()
    us = _time(d.add, items)
    row("authz Distinct (exact<=24, p=7)", us,
        mean_error(Distinct, Distinct.add, len, n),
        mean_error(Distinct, Distinct.add, len, 20), "128 B registers")  # fmt: skip
    h = HyperLogLog(7)
    us = _time(h.add, items)
    row("authz HyperLogLog (p=7)", us,
        mean_error(lambda: HyperLogLog(7), HyperLogLog.add, HyperLogLog.estimate, n),
        mean_error(lambda: HyperLogLog(7), HyperLogLog.add, HyperLogLog.estimate, 20),
        "128 B")  # fmt: skip


def datasketch_row(items: list[str], small: list[str]) -> None:
    try:
        import datasketch
    except ImportError:
        print("datasketch: not installed")
        return
    h = datasketch.HyperLogLog(p=7)
    us = _time(lambda x: h.update(x.encode()), items)
    make = lambda: datasketch.HyperLogLog(p=7)  # noqa: E731
    add = lambda s, x: s.update(x.encode())  # noqa: E731
    row("datasketch.HyperLogLog (p=7)", us,
        mean_error(make, add, lambda s: s.count(), len(items) // 2),
        mean_error(make, add, lambda s: s.count(), 20), f"{h.reg.nbytes} B numpy")  # fmt: skip


def hyperloglog_row(items: list[str], small: list[str]) -> None:
    try:
        import hyperloglog
    except ImportError:
        print("hyperloglog: not installed")
        return
    h = hyperloglog.HyperLogLog(0.09)  # the smallest it makes: 256 registers
    us = _time(h.add, items)
    make = lambda: hyperloglog.HyperLogLog(0.09)  # noqa: E731
    add = lambda s, x: s.add(x)  # noqa: E731
    row(f"hyperloglog.HyperLogLog (m={h.m})", us,
        mean_error(make, add, len, len(items) // 2),
        mean_error(make, add, len, 20), f"{h.m} registers (list)")  # fmt: skip


def redis_row(items: list[str], small: list[str]) -> None:
    server = shutil.which("redis-server")
    if server is None:
        print("redis: redis-server not installed")
        return
    import socket

    import redis

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            one = items[:2000]
            us = _time(lambda x: client.pfadd("k", x), one)
            client.delete("k")
            started = time.perf_counter()
            for i in range(0, len(items), 100):
                pipe = client.pipeline(transaction=False)
                for x in items[i : i + 100]:
                    pipe.pfadd("k", x)
                pipe.execute()
            piped = (time.perf_counter() - started) / len(items) * 1e6
            large = int(client.pfcount("k"))
            for x in small:
                client.pfadd("s", x)
            small_count = int(client.pfcount("s"))
            size = int(client.memory_usage("k") or 0)
            row("Redis PFADD (one round trip)", us, _error(large, len(items) // 2),
                _error(small_count, len(small) // 2), f"{size} B in Redis")  # fmt: skip
            row("Redis PFADD (pipelined x100)", piped, _error(large, len(items) // 2),
                _error(small_count, len(small) // 2), "")  # fmt: skip
        finally:
            proc.terminate()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    args = parser.parse_args()
    distinct = [f"203.0.113.{i}:{i * 7919}" for i in range(args.items)]
    items = [x for x in distinct for _ in range(2)]
    small = [f"addr-{i}" for i in range(20) for _ in range(2)]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"loadavg {' '.join(load)}; {args.items} distinct items, each added twice")
    print(f"{'sketch':34} {'µs/add':>9} {'err@' + str(args.items):>11} {'err@20':>10}  size")
    ours(items, small)
    datasketch_row(items, small)
    hyperloglog_row(items, small)
    redis_row(items, small)


if __name__ == "__main__":
    main()
