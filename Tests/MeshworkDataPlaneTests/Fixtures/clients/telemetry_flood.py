"""Telemetry reports as a misbehaving sidecar credential sends them, over one keep-alive
connection to the controller (plain HTTP on 127.0.0.1).

usage: telemetry_flood.py PORT INSTANCE SERVICE CREDENTIAL MODE
  burst N      N small reports back to back: prints {"statuses": {code: count}, "seconds": s}
  peers FIRST COUNT   one report with inbound edges from peers pFIRST.. (COUNT of them),
                      sent again while the rate limit refuses it (429; every 50 ms, 10 s at most)
  huge         one report with a count of 2^63: prints {"status", "body"}
"""
import http.client, json, sys, time

port, instance, service, credential, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
headers = {"Authorization": "Bearer " + credential, "Content-Type": "application/json"}


def edge(peer, count=1):
    return {"direction": "inbound", "peer": peer, "classes": [0, count, 0, 0, 0], "latency": [[1234, count]]}


def post(edges):
    body = json.dumps({"service": service, "seconds": 1, "edges": edges})
    conn.request("POST", "/v1/instances/%s/telemetry" % instance, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read().decode()


if mode == "burst":
    n = int(sys.argv[6])
    statuses = {}
    start = time.monotonic()
    for _ in range(n):
        status, _ = post([edge("web")])
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    print(json.dumps({"statuses": statuses, "seconds": round(time.monotonic() - start, 3)}))
elif mode == "peers":
    first, count = int(sys.argv[6]), int(sys.argv[7])
    deadline = time.monotonic() + 10
    while True:
        status, body = post([edge("p%d" % i) for i in range(first, first + count)])
        if status != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    print(json.dumps({"status": status, "body": body}))
elif mode == "huge":
    status, body = post([edge("web", 2 ** 63)])
    print(json.dumps({"status": status, "body": body}))
