"""The engine's side of a storage scenario over STOMP 1.2, driven by
stomp.py (Debian's python3-stomp): an independent client. Run by
crates/depotd/tests/stomp.rs with /usr/bin/python3.

Usage: scenario.py HOST:PORT PKI_DIR STORAGE_DIR FLOW_ID

Over mutual TLS with the dev certificates: CONNECT with heart-beats,
SUBSCRIBE to the responses and the events, then connect a LOCALFS
storage, create a domain, two volumes, copy one onto the other with
SDM.copy_data and follow the job's events to the end; a batch, a
notification and a parse error; a quiet spell longer than two
heart-beats; a second connection that must not see the first one's
answers; a SEND nobody can take. Prints one JSON object of what it saw.
"""

import json
import os
import sys
import threading
import time
import uuid

import ssl

import stomp
import stomp.transport

# stomp.py reads the TLS socket in its receiver thread while the caller's
# thread writes to it, and CPython's SSLSocket (one OpenSSL object) is not
# safe for that: under TLS 1.3 the reader handles the server's session
# tickets as the writer sends CONNECT, and about one connection in 25 then
# loses its first frame or its reply (measured against depotd and seen with
# a bare ssl socket and two threads; never with TLS 1.2 or one thread).
# TLS 1.2, which the engine also speaks, has no such post-handshake
# traffic. stomp.py 8 takes its SSLContext protocol from this global.
stomp.transport.DEFAULT_SSL_VERSION = ssl.PROTOCOL_TLSv1_2

REQUESTS = "jms.topic.vdsm_requests"
RESPONSES = "jms.topic.vdsm_responses"
EVENTS = "jms.queue.events"
BLANK = "00000000-0000-0000-0000-000000000000"
LOCALFS = 4
WAIT = 60.0
# Heart-beats every 2 s both ways; stomp.py allows the server 3 intervals
# before it gives up, so a loaded machine does not fail the test.
HEARTBEATS = (2000, 2000)


class Client(stomp.ConnectionListener):
    def __init__(self, addr, pki, name):
        host, port = addr.rsplit(":", 1)
        hp = (host, int(port))
        self.name = name
        self.cond = threading.Condition()
        self.answers = {}
        self.events = []
        self.errors = []
        self.receipts = set()
        self.heartbeat_timeouts = 0
        self.disconnected = False
        self.conn = stomp.Connection12(
            [hp],
            heartbeats=HEARTBEATS,
            heart_beat_receive_scale=3.0,
            try_loopback_connect=False,
            reconnect_attempts_max=1,
        )
        self.conn.set_ssl(
            [hp],
            key_file=os.path.join(pki, "client-key.pem"),
            cert_file=os.path.join(pki, "client.pem"),
            ca_certs=os.path.join(pki, "ca.pem"),
        )
        self.conn.set_listener("", self)
        self.conn.connect(wait=True)

    # stomp.py calls these from its receiver thread.
    def on_message(self, frame):
        body = json.loads(frame.body)
        sub = frame.headers.get("subscription")
        with self.cond:
            items = body if isinstance(body, list) else [body]
            if isinstance(body, list):
                self.answers["batch"] = (sub, body)
            for item in items:
                if "method" in item and "id" not in item:
                    self.events.append((sub, item))
                elif not isinstance(body, list):
                    self.answers[item.get("id")] = (sub, item)
            self.cond.notify_all()

    def on_error(self, frame):
        with self.cond:
            self.errors.append(frame.headers.get("message") or frame.body)
            self.cond.notify_all()

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id"))
            self.cond.notify_all()

    def on_heartbeat_timeout(self):
        self.heartbeat_timeouts += 1

    def on_disconnected(self):
        with self.cond:
            self.disconnected = True
            self.cond.notify_all()

    def wait_for(self, what, check):
        with self.cond:
            if not self.cond.wait_for(check, timeout=WAIT):
                raise RuntimeError(f"{self.name}: no {what} within {WAIT} s")

    def subscribe(self, destination, sub_id):
        receipt = str(uuid.uuid4())
        self.conn.subscribe(destination, id=sub_id, ack="auto",
                            headers={"receipt": receipt})
        self.wait_for(f"receipt of SUBSCRIBE {destination}",
                      lambda: receipt in self.receipts)

    def send(self, text, flow_id=None, destination=REQUESTS):
        headers = {"reply-to": RESPONSES}
        if flow_id:
            headers["ovirtCorrelationId"] = flow_id
        self.conn.send(destination, text, content_type="application/json",
                       headers=headers)

    def answer(self, key):
        self.wait_for(f"answer {key}", lambda: key in self.answers)
        return self.answers[key]

    def call(self, method, params, flow_id=None):
        rid = str(uuid.uuid4())
        self.send(json.dumps({"jsonrpc": "2.0", "method": method,
                              "params": params, "id": rid}), flow_id)
        sub, msg = self.answer(rid)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return sub, msg["result"]


def volume(sd, img, vol, size):
    return {"storagepoolID": BLANK, "storagedomainID": sd, "imageID": img,
            "volumeID": vol, "size": str(size), "volFormat": "RAW",
            "preallocate": "SPARSE", "diskType": "DATA", "desc": "stomp",
            "srcImgUUID": BLANK, "srcVolUUID": BLANK}


def main():
    addr, pki, storage, flow = sys.argv[1:5]
    out = {}
    c = Client(addr, pki, "engine")
    c.subscribe(RESPONSES, "responses")
    c.subscribe(EVENTS, "events")
    # Another connection on the same response destination.
    other = Client(addr, pki, "other")
    other.subscribe(RESPONSES, "other-responses")

    subs = set()
    conn_id = str(uuid.uuid4())
    sub, st = c.call("StoragePool.connectStorageServer", {
        "storagepoolID": BLANK, "domainType": LOCALFS,
        "connectionParams": [{"id": conn_id, "connection": storage}]}, flow)
    subs.add(sub)
    out["connect_status"] = st
    sd = str(uuid.uuid4())
    sub, _ = c.call("StorageDomain.create", {
        "storagedomainID": sd, "domainType": LOCALFS, "typeArgs": storage,
        "name": "stomp", "domainClass": 1, "version": 5}, flow)
    subs.add(sub)
    size = 8 << 20
    src = (str(uuid.uuid4()), str(uuid.uuid4()))
    dst = (str(uuid.uuid4()), str(uuid.uuid4()))
    for img, vol in (src, dst):
        sub, _ = c.call("Volume.create", volume(sd, img, vol, size), flow)
        subs.add(sub)
    src_path = os.path.join(storage, sd, "images", src[0], src[1])
    dst_path = os.path.join(storage, sd, "images", dst[0], dst[1])
    data = bytes((i * 7 + 3) % 251 for i in range(1 << 20)) * 3
    with open(src_path, "r+b") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())

    job = str(uuid.uuid4())
    ep = lambda x: {"endpoint_type": "div", "sd_id": sd, "img_id": x[0],
                    "vol_id": x[1]}
    sub, ok = c.call("SDM.copy_data", {"job_id": job, "source": ep(src),
                                       "destination": ep(dst)}, flow)
    subs.add(sub)
    out["copy_started"] = ok
    name = "|jobs|status|" + job
    c.wait_for("the copy's final event", lambda: any(
        e["method"] == name and e["params"]["status"] in ("done", "failed")
        for _, e in c.events))
    mine = [(s, e) for s, e in c.events if e["method"] == name]
    out["job_event_statuses"] = [e["params"]["status"] for _, e in mine]
    out["job_event_subscriptions"] = sorted({s for s, _ in mine})
    out["job_event_has_notify_time"] = all(
        "notify_time" in e["params"] for _, e in mine)
    _, jobs = c.call("Host.getJobs", {"job_ids": [job]})
    out["job_status"] = jobs[job]["status"]
    with open(dst_path, "rb") as f:
        out["copied_equal"] = f.read(len(data)) == data

    # JSON-RPC as over HTTP: a batch, a notification, a parse error.
    c.send(json.dumps([
        {"jsonrpc": "2.0", "method": "Host.ping2", "id": "b1"},
        {"jsonrpc": "2.0", "method": "Host.ping2"},
        {"jsonrpc": "2.0", "method": "No.such", "id": "b2"}]))
    _, batch = c.answer("batch")
    out["batch"] = sorted(
        (m["id"], m.get("error", {}).get("code", 0)) for m in batch)
    c.send("{not json")
    _, perr = c.answer(None)
    out["parse_error_code"] = perr["error"]["code"]

    # Quiet for longer than two heart-beat intervals: both sides keep the
    # connection alive by themselves.
    time.sleep(5.0)
    _, pong = c.call("Host.ping2", {})
    out["ping_after_quiet"] = pong
    out["response_subscriptions"] = sorted(subs)
    out["heartbeat_timeouts"] = c.heartbeat_timeouts
    out["errors"] = c.errors
    out["other_answers"] = len(other.answers)

    # A destination nobody serves: VDSM's error, and the connection ends.
    lost = Client(addr, pki, "lost")
    lost.send("{}", destination="jms.topic.nowhere")
    lost.wait_for("ERROR", lambda: lost.errors)
    lost.wait_for("the close after ERROR", lambda: lost.disconnected)
    out["nowhere_error"] = lost.errors[0]

    for client in (c, other):
        client.conn.disconnect(receipt=str(uuid.uuid4()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
