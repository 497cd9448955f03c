"""The simplest local endpoint a device owner writes by hand: the standard library's HTTP server
and ONNX Runtime, nothing else (no framework on a lean device).

Usage: python plain_device.py MODEL.onnx PORT FEATURE [FEATURE ...]
Body ``{"rows": [{feature: value, ...}]}`` (the daemon's) → ``{"probabilities": [[...], ...]}``.
HTTP/1.1 keep-alive, one thread per connection. No input checks, no auth, no telemetry, no
request ids: the floor (a wrong body is a 500 or a wrong answer, which is the point of the
comparison).
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import onnxruntime as ort

so = ort.SessionOptions()
so.intra_op_num_threads = 1
sess = ort.InferenceSession(sys.argv[1], sess_options=so, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0].name
features = sys.argv[3:]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body leave in two writes: without TCP_NODELAY every keep-alive response waits
    # ~40 ms for the client's delayed ACK (Nagle), which would make this floor look absurdly slow
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        x = np.array([[row[f] for f in features] for row in body["rows"]], dtype=np.float32)
        outs = sess.run(None, {inp: x})
        data = json.dumps({"probabilities": outs[-1].tolist()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
    print(f"listening on http://127.0.0.1:{srv.server_address[1]}", file=sys.stderr, flush=True)
    srv.serve_forever()
