"""A plain-TCP to TLS relay for conformance runs over wss: kosoku speaks
plain ws only, so each connection it opens here is carried over TLS to the
server under test, which then sees every Autobahn case over wss.
Ends of stream are passed on both ways, so who closed first stays visible.
Usage: python3 scripts/tls_relay.py TARGET_HOST:PORT CA_FILE  (prints the
port it listens on, on 127.0.0.1)"""
import asyncio
import ssl
import sys


async def pipe(reader, writer, half_close):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if half_close and writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()
    except (ConnectionError, ssl.SSLError):
        writer.close()


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=sys.argv[2])

    async def relay(client_r, client_w):
        try:
            server_r, server_w = await asyncio.open_connection(host, int(port), ssl=ctx,
                                                               server_hostname="localhost")
        except OSError as e:
            print(f"relay: cannot reach {sys.argv[1]}: {e}", file=sys.stderr, flush=True)
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, server_w, half_close=False),
                             pipe(server_r, client_w, half_close=True))
        client_w.close()
        server_w.close()

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
