"""Memory per TLS session: a listener built on ``colony.tlsfiles.server_context`` holds idle
TLS sessions without asyncio's 256 KiB read buffer each, and still carries data of any size
(real sockets on 127.0.0.1, both ways through asyncio's SSL protocol)."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from colony.tlsfiles import TLS_READ_BUFFER

SESSIONS = 20


async def _serve(server_ctx, handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    return server, server.sockets[0].getsockname()[1]


async def test_an_idle_tls_session_costs_kilobytes_not_the_256_kib_buffer(loopback_tls):
    server_ctx, client_ctx = loopback_tls
    connected: list[asyncio.StreamWriter] = []
    all_in = asyncio.Event()

    async def idle(reader, writer):
        connected.append(writer)
        if len(connected) == SESSIONS:
            all_in.set()
        await reader.read()  # until the client closes

    server, port = await _serve(server_ctx, idle)
    # Client and server share the process (and the bound), so what grows is both sides.
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.take_snapshot()
        clients = [await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
                   for _ in range(SESSIONS)]
        await asyncio.wait_for(all_in.wait(), 10)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    per_session_both_sides = grown / SESSIONS
    # With asyncio's default each side alone holds 256 KiB; bounded, both sides together
    # stay well under the 64 KB a TLS session may cost the edge.
    assert per_session_both_sides < 2 * TLS_READ_BUFFER + 32 * 1024, per_session_both_sides
    for _, writer in clients:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_data_larger_than_the_read_buffer_arrives_whole_both_ways(loopback_tls):
    server_ctx, client_ctx = loopback_tls
    payload = bytes(range(256)) * (4 * TLS_READ_BUFFER // 256 * 16)  # 1 MiB: many records and reads

    async def echo(reader, writer):
        data = await reader.readexactly(len(payload))
        writer.write(data)
        await writer.drain()
        writer.close()

    server, port = await _serve(server_ctx, echo)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
    writer.write(payload)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 30) == payload
    writer.close()
    server.close()
    await server.wait_closed()
