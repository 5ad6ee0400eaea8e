"""Continue, in a task, a coroutine that was started by hand.

The HTTP transport runs the first step of a check synchronously in its protocol
callback (:mod:`authz.transport.http_connection`): most checks never wait, and
need no task. Only one that really waits is handed to a task through
:class:`Resume`, which picks the coroutine up where it was suspended.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

from authz.model import Decision


class Resume:
    """Continue a coroutine that was started by hand and suspended on ``yielded``.

    The first step of a check runs synchronously in the protocol callback; only
    when it really waits is it handed to a task, which resumes it from here.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Decision], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Decision]:
        coro, pending = self._coro, self._yielded
        while True:
            try:
                value = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and the like go into the coroutine
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    result: Decision = stop.value
                    return result
                continue
            try:
                pending = coro.send(value)
            except StopIteration as stop:
                done: Decision = stop.value
                return done


async def run_resumed(awaitable: Resume) -> Decision:
    return await awaitable
