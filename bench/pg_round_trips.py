#!/usr/bin/env python3
"""A TCP proxy in front of PostgreSQL that counts the round trips its clients make.

Usage: pg_round_trips.py LISTEN_PORT PG_PORT COUNT_FILE

Every connection to 127.0.0.1:LISTEN_PORT is relayed to 127.0.0.1:PG_PORT unchanged. The
frontend messages are parsed (PostgreSQL protocol 3: after the untyped startup packets, a type
byte and a 4-byte length) and each message after which the client waits for the server counts
as one round trip: Sync ('S', ending an extended-protocol exchange: Parse/Bind/Execute...) and
Query ('Q', the simple protocol: BEGIN, COMMIT, LISTEN). COUNT_FILE is rewritten with
"round_trips=N syncs=N queries=N connections=N" after every change, so a benchmark reads the
counts before and after a run.
"""
import asyncio
import struct
import sys

counts = {"round_trips": 0, "syncs": 0, "queries": 0, "connections": 0}
count_file = ""

# Untyped startup packets that keep the connection in its startup phase.
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


def save() -> None:
    with open(count_file, "w") as f:
        f.write(" ".join(f"{k}={v}" for k, v in counts.items()) + "\n")


class FrontendParser:
    """Follows the client's byte stream message by message, counting round trips."""

    def __init__(self) -> None:
        self.buffer = b""
        self.startup = True

    def feed(self, data: bytes) -> None:
        self.buffer += data
        changed = False
        while True:
            if self.startup:
                if len(self.buffer) < 8:
                    break
                length, code = struct.unpack("!ii", self.buffer[:8])
                if len(self.buffer) < length:
                    break
                self.buffer = self.buffer[length:]
                if code not in (SSL_REQUEST, GSSENC_REQUEST):
                    self.startup = False
                continue
            if len(self.buffer) < 5:
                break
            kind = self.buffer[:1]
            (length,) = struct.unpack("!i", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                break
            self.buffer = self.buffer[1 + length:]
            if kind == b"S":
                counts["syncs"] += 1
                counts["round_trips"] += 1
                changed = True
            elif kind == b"Q":
                counts["queries"] += 1
                counts["round_trips"] += 1
                changed = True
        if changed:
            save()


async def pipe(reader, writer, parser=None) -> None:
    try:
        while data := await reader.read(65536):
            if parser is not None:
                parser.feed(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def serve(client_reader, client_writer, pg_port: int) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", pg_port)
    except OSError:
        client_writer.close()
        return
    counts["connections"] += 1
    save()
    await asyncio.gather(
        pipe(client_reader, server_writer, FrontendParser()),
        pipe(server_reader, client_writer),
    )


async def main() -> None:
    global count_file
    listen_port, pg_port, count_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    save()
    server = await asyncio.start_server(
        lambda r, w: serve(r, w, pg_port), "127.0.0.1", listen_port
    )
    print(f"pg_round_trips listening on {listen_port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
