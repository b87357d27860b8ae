#!/usr/bin/env python3
"""An HTTP/2 client that probes a listener's limits with Python's h2: the
SETTINGS_MAX_CONCURRENT_STREAMS it announces, and whether a rapid-reset attack (HEADERS then
RST_STREAM, over and over: CVE-2023-44487) gets the connection closed with GOAWAY.

usage: h2_limits.py PORT RESETS [CA CERT KEY]   (with the last three: mTLS, ALPN h2)
prints {"max_concurrent_streams", "goaway", "closed", "resets_sent"}: closed when the server
ended the connection (its GOAWAY may be lost to the reset of a socket still being written to)
"""
import json, socket, ssl, sys, time
import h2.config, h2.connection, h2.errors, h2.events, h2.exceptions

port, resets = int(sys.argv[1]), int(sys.argv[2])
sock = socket.create_connection(("127.0.0.1", port), timeout=5)
if len(sys.argv) > 5:
    context = ssl.create_default_context(cafile=sys.argv[3])
    context.check_hostname = False
    context.load_cert_chain(sys.argv[4], sys.argv[5])
    context.set_alpn_protocols(["h2"])
    sock = context.wrap_socket(sock)
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
state = {"settings": None, "goaway": False, "closed": False}


def receive(timeout):
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except (socket.timeout, ssl.SSLWantReadError):
        return True
    except OSError:
        state["closed"] = True
        return False
    if not data:
        state["closed"] = True
        return False
    for event in conn.receive_data(data):
        if isinstance(event, h2.events.RemoteSettingsChanged):
            state["settings"] = conn.remote_settings.max_concurrent_streams
        elif isinstance(event, h2.events.ConnectionTerminated):
            state["goaway"] = True
    out = conn.data_to_send()
    if out:
        sock.sendall(out)
    return True


deadline = time.time() + 5
while state["settings"] is None and time.time() < deadline:
    receive(1)

sent = 0
headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "orders")]
try:
    while sent < resets and not state["goaway"]:
        for _ in range(50):
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, headers, end_stream=True)
            conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
            sent += 1
        sock.sendall(conn.data_to_send())
        if not receive(0.01):
            break
    end = time.time() + 2
    while not state["goaway"] and time.time() < end and receive(0.2):
        pass
except (OSError, h2.exceptions.ProtocolError):
    # Writing to a connection the server closed: read what it said before it went.
    state["closed"] = True
    while receive(0.2):
        pass
print(json.dumps({"max_concurrent_streams": state["settings"], "goaway": state["goaway"],
                  "closed": state["closed"], "resets_sent": sent}))
