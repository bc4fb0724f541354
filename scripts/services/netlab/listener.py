#!/usr/bin/env python3
"""Lab listener: run inside the lab namespace; accepts on every local address of the namespace.

Answers each connection with a short HTTP response carrying a `Server` header, then closes.
Usage: listener.py PORT [PORT...]
"""
import asyncio
import socket
import sys

RESPONSE = b"HTTP/1.0 200 OK\r\nServer: Apache/2.4 (lab)\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


async def handle(reader, writer):
    try:
        # Answer as soon as the request line arrives, or when the client sends nothing for a moment.
        try:
            await asyncio.wait_for(reader.readline(), timeout=2)
        except (asyncio.TimeoutError, ConnectionError):
            pass
        writer.write(RESPONSE)
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def listening_socket(port):
    # TCP_DEFER_ACCEPT: a connection reaches the accept queue (and this process) only once the
    # client sends data. A probe that connects and resets never does, so a sweep of a whole /16
    # is answered by the kernel alone and a slow listener drops no handshake.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 2)
    sock.bind(("0.0.0.0", port))
    sock.listen(65535)
    sock.setblocking(False)
    return sock


async def main(ports):
    servers = [await asyncio.start_server(handle, sock=listening_socket(p)) for p in ports]
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main([int(p) for p in sys.argv[1:]]))
