"""Malformed frames, a silent client and a client that never reads, on raw
TLS sockets (Python's ssl module). What depotd answers is split at NUL and
read with stomp.py's own frame parser (stomp.utils.parse_frame), not with
depot's. Run by crates/depotd/tests/stomp.rs with /usr/bin/python3.

Usage: abuse.py HOST:PORT PKI_DIR

Prints one JSON object: for each case the ERROR message seen (or null) and
whether depotd closed the connection.
"""

import json
import os
import socket
import ssl
import sys
import time

from stomp.utils import parse_frame

WAIT = 30.0
CONNECT = b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\0"
REQ = b"destination:jms.topic.vdsm_requests\n"

CASES = {
    "no_nul": b"SEND\n" + REQ + b"content-length:2\n\n{}X",
    "bad_content_length": b"SEND\n" + REQ + b"content-length:12x\n\n{}\0",
    "oversized_body": b"SEND\n" + REQ + b"content-length:99999999\n\n",
    "unknown_command": b"FROB\n\n\0",
    "bad_escape": b"SEND\ndestination:jms.topic.vdsm\\trequests\n\n\0",
    "oversized_header": b"SEND\nx:" + b"x" * 20000 + b"\n\n\0",
    "too_many_headers": b"SEND\n" + b"".join(
        b"h%d:v\n" % i for i in range(40)) + b"\n\0",
    "not_utf8": b"SEND\nbad:\xff\n\n\0",
    "nowhere": b"SEND\ndestination:jms.topic.nowhere\n\n{}\0",
}


def connect(addr, pki):
    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.pem"))
    ctx.load_cert_chain(os.path.join(pki, "client.pem"),
                        os.path.join(pki, "client-key.pem"))
    raw = socket.create_connection((host, int(port)), timeout=WAIT)
    return ctx.wrap_socket(raw, server_hostname=host)


def read_to_end(s, wait=WAIT):
    """Everything depotd sends until it closes: (bytes, closed in time)."""
    data = b""
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return data, False
        except (ConnectionError, ssl.SSLError):
            return data, True
        if not chunk:
            return data, True
        data += chunk


def frames(data):
    out = []
    for chunk in data.split(b"\0"):
        chunk = chunk.lstrip(b"\r\n")
        if chunk:
            out.append(parse_frame(chunk))
    return out


def error_of(data):
    errors = [f for f in frames(data) if f.cmd == "ERROR"]
    return errors[0].headers.get("message") if errors else None


def stomp_session(addr, pki, connect_frame=CONNECT):
    s = connect(addr, pki)
    s.sendall(connect_frame)
    data = b""
    while b"\0" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed before CONNECTED")
        data += chunk
    head = frames(data)[0]
    if head.cmd != "CONNECTED":
        raise RuntimeError(f"answered CONNECT with {head.cmd}")
    return s, head


def main():
    addr, pki = sys.argv[1:3]
    out = {}
    for name, frame in CASES.items():
        s, _ = stomp_session(addr, pki)
        s.sendall(frame)
        data, closed = read_to_end(s)
        out[name] = {"error": error_of(data), "closed": closed}

    # A client that promised a heart-beat every second and goes silent.
    s, head = stomp_session(
        addr, pki, b"CONNECT\naccept-version:1.2\nheart-beat:1000,0\n\n\0")
    start = time.monotonic()
    data, closed = read_to_end(s)
    out["silent"] = {"error": error_of(data), "closed": closed,
                     "heart_beat": head.headers.get("heart-beat"),
                     "after_s": time.monotonic() - start}

    # A client that sends calls with 256 KiB answers and never reads.
    s, _ = stomp_session(addr, pki)
    s.sendall(b"SUBSCRIBE\ndestination:jms.topic.vdsm_responses\nid:r\n\n\0")
    body = json.dumps({"jsonrpc": "2.0", "method": "Host.ping2",
                       "id": "i" * (256 << 10)}).encode()
    frame = (b"SEND\n" + REQ + b"reply-to:jms.topic.vdsm_responses\n"
             b"content-length:%d\n\n" % len(body) + body + b"\0")
    sent = 0
    s.settimeout(2.0)
    deadline = time.monotonic() + 60
    while sent < 2000 and time.monotonic() < deadline:
        try:
            s.sendall(frame)
            sent += 1
        except (socket.timeout, ConnectionError, ssl.SSLError):
            break
    # Now read: whatever was already on its way, then the close.
    data, closed = read_to_end(s, 60)
    out["not_reading"] = {"sent": sent, "closed": closed}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
