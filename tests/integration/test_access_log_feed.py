"""The access-log service over real gRPC: a client streams StreamAccessLogsMessage batches
as Envoy does, and a subscriber on the hub gets the observations; garbage and a full
queue are counted, never fatal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import grpc

from authz.detect.events import RESPONSE_HUB, ResponseHub, ResponseObservation
from authz.feedback.feed import ResponseFeed
from authz.stages import Shared
from authz.transport.als_server import AccessLogServer
from authz.transport.envoy_als import (
    ACCESS_LOG_SERVICE,
    StreamAccessLogsMessage,
    StreamAccessLogsResponse,
    build_http_entry,
    to_observation,
)

METHOD = f"/{ACCESS_LOG_SERVICE}/StreamAccessLogs"


class Collect:
    def __init__(self) -> None:
        self.seen: list[ResponseObservation] = []

    def on_response(self, observation: ResponseObservation) -> None:
        self.seen.append(observation)


def batches(ids: Iterable[list[str]]) -> list[StreamAccessLogsMessage]:
    messages = []
    for i, batch in enumerate(ids):
        m = StreamAccessLogsMessage()
        if i == 0:  # Envoy identifies itself in the first message of a stream
            m.identifier.node.id = "test-envoy"
            m.identifier.log_name = "authz"
        for d in batch:
            m.http_logs.log_entry.append(
                build_http_entry(path=f"/v1/orders/{d}", decision_id=d, status=200, route="o")
            )
        messages.append(m)
    return messages


async def stream(address: str, messages: list[bytes]) -> StreamAccessLogsResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_unary(
            METHOD,
            request_serializer=lambda b: b,
            response_deserializer=StreamAccessLogsResponse.FromString,
        )

        async def send() -> AsyncIterator[bytes]:
            for m in messages:
                yield m

        return await call(send(), timeout=10)


async def wait_until(predicate: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


def _server(shared: Shared, capacity: int = 65536) -> tuple[ResponseFeed, AccessLogServer]:
    feed = ResponseFeed.of(shared, to_observation, capacity=capacity)
    server = AccessLogServer("127.0.0.1:0", feed, metrics=shared.metrics)
    shared.runtimes.add(server)
    return feed, server


def test_streamed_entries_reach_a_subscriber() -> None:
    async def run() -> None:
        shared = Shared()
        feed, server = _server(shared)
        assert server.port == 0 and server.server is None  # built: nothing bound
        got = Collect()
        shared.get(RESPONSE_HUB, ResponseHub).subscribe(got)
        await shared.runtimes.start()
        try:
            msgs = [m.SerializeToString() for m in batches([["a", "b"], ["c"], ["d", "e", "f"]])]
            reply = await stream(f"127.0.0.1:{server.port}", msgs)
            assert reply == StreamAccessLogsResponse()
            await wait_until(lambda: len(got.seen) == 6)
            assert [o.decision_id for o in got.seen] == ["a", "b", "c", "d", "e", "f"]
            assert got.seen[0].path == "/v1/orders/a" and got.seen[0].status == 200
            assert feed.counts["joined"] == 6
            assert shared.metrics.value("authz_feed_streams") == 0  # the stream ended
        finally:
            await shared.runtimes.aclose()

    asyncio.run(run())


def test_garbage_is_counted_and_the_stream_goes_on() -> None:
    async def run() -> None:
        shared = Shared()
        _, server = _server(shared)
        got = Collect()
        shared.get(RESPONSE_HUB, ResponseHub).subscribe(got)
        await shared.runtimes.start()
        try:
            good = [m.SerializeToString() for m in batches([["a"], ["b"]])]
            await stream(f"127.0.0.1:{server.port}", [good[0], b"\xff\xff\xff", good[1]])
            await wait_until(lambda: len(got.seen) == 2)
            assert shared.metrics.value("authz_feed_invalid_messages_total") == 1
        finally:
            await shared.runtimes.aclose()

    asyncio.run(run())


def test_a_flood_past_the_bound_is_dropped_and_counted() -> None:
    async def run() -> None:
        shared = Shared()
        feed, server = _server(shared, capacity=10)
        await server.start()  # the feed's drain not started: nothing leaves the queue
        try:
            msgs = [m.SerializeToString() for m in batches([[str(i) for i in range(25)]])]
            await stream(f"127.0.0.1:{server.port}", msgs)
            assert len(feed) == 10
            assert feed.counts["dropped"] == 15
        finally:
            await server.aclose()

    asyncio.run(run())


def test_a_stream_is_cut_when_the_server_closes() -> None:
    async def run() -> None:
        shared = Shared()
        feed, server = _server(shared)
        await shared.runtimes.start()
        address = f"127.0.0.1:{server.port}"
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.stream_unary(METHOD, request_serializer=lambda b: b)
            stop = asyncio.Event()

            async def forever() -> AsyncIterator[bytes]:
                yield batches([["x"]])[0].SerializeToString()
                await stop.wait()

            pending = asyncio.ensure_future(call(forever(), timeout=10))
            await wait_until(lambda: feed.counts["joined"] == 1)
            assert shared.metrics.value("authz_feed_streams") == 1
            await shared.runtimes.aclose()  # Envoy sees the stream end and reconnects
            try:
                await pending
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            stop.set()

    asyncio.run(run())


def test_with_a_secret_only_streams_that_carry_it_are_read() -> None:
    from authz.transport.envoy_http import SECRET_HEADER

    secret = "s" * 40

    async def run() -> None:
        shared = Shared()
        feed = ResponseFeed.of(shared, to_observation)
        server = AccessLogServer("127.0.0.1:0", feed, metrics=shared.metrics, secret=secret)
        shared.runtimes.add(server)
        await shared.runtimes.start()
        address = f"127.0.0.1:{server.port}"
        msgs = [m.SerializeToString() for m in batches([["a"]])]
        try:
            for metadata in ((), ((SECRET_HEADER, "wrong" * 8),)):
                async with grpc.aio.insecure_channel(address) as channel:
                    call = channel.stream_unary(METHOD, request_serializer=lambda b: b)

                    async def send() -> AsyncIterator[bytes]:
                        for m in msgs:
                            yield m

                    try:
                        await call(send(), timeout=10, metadata=metadata)
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                    else:
                        raise AssertionError("a stream without the secret was read")
            assert shared.metrics.value("authz_feed_refused_streams_total") == 2
            async with grpc.aio.insecure_channel(address) as channel:
                call = channel.stream_unary(METHOD, request_serializer=lambda b: b)

                async def good() -> AsyncIterator[bytes]:
                    for m in msgs:
                        yield m

                await call(good(), timeout=10, metadata=((SECRET_HEADER, secret),))
            await wait_until(lambda: feed.counts["joined"] == 1)
        finally:
            await shared.runtimes.aclose()

    asyncio.run(run())


def test_exposure_needs_a_secret() -> None:
    import pytest

    from authz.transport.als_server import check_exposure

    check_exposure("127.0.0.1:9194", None)
    check_exposure("0.0.0.0:9194", "s" * 40)
    check_exposure("0.0.0.0:9194", None, trust_network=True)
    with pytest.raises(ValueError, match="--access-log-secret-file"):
        check_exposure("0.0.0.0:9194", None)
