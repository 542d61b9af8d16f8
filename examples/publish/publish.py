"""Publishing to ringcast from Python (standard library only).

Unix socket: one JSON object per line, in order, never dropped (when the
server is behind, the write waits). Keep the connection open and write a
line per message. UDP: one datagram per message, cheapest, may be dropped
under overload (the server counts drops).

    python3 publish.py unix ./ringcast.sock prices '{"EURUSD": 1.0842}'
    python3 publish.py udp 127.0.0.1:9000 prices '{"EURUSD": 1.0842}'
"""
import json
import socket
import sys


def message(channel, data):
    return json.dumps({"channel": channel, "data": data}).encode() + b"\n"


def main():
    transport, where, channel, data = sys.argv[1:5]
    data = json.loads(data)
    if transport == "unix":
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as feed:
            feed.connect(where)
            feed.sendall(message(channel, data))
    else:
        host, port = where.rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as feed:
            feed.sendto(message(channel, data), (host, int(port)))


main()
