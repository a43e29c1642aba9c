"""The workspace command of tests/provisioners/test_process_provisioner.py: a tiny HTTP server, or a process
that misbehaves on purpose.

    python process_workspace.py serve PORT [DELAY]   wait DELAY s, then answer HTTP on 127.0.0.1:PORT
    python process_workspace.py exit CODE [DELAY]    print two lines, wait DELAY s, exit with CODE
    python process_workspace.py idle                 never listen (sleep until signalled)
    python process_workspace.py deaf PORT            as serve, but SIGTERM is ignored (SIGKILL ends it)

``serve`` answers ``GET /`` with the workspace's environment variables that start with
``WL_PARAM_`` and its ``PORT``, as JSON, so a test sees what reached the process.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        env = {k: v for k, v in os.environ.items() if k.startswith("WL_PARAM_") or k == "PORT"}
        body = json.dumps({"env": env, "cwd": os.getcwd(), "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print(format % args, flush=True)


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "deaf":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        mode = "serve"
    if mode == "serve":
        time.sleep(float(argv[2]) if len(argv) > 2 else 0.0)
        server = http.server.HTTPServer(("127.0.0.1", int(argv[1])), Handler)
        print(f"serving on {argv[1]}", flush=True)
        server.serve_forever()
    if mode == "exit":
        print("starting up", flush=True)
        print(f"fatal: cannot start (exit {argv[1]})", flush=True)
        time.sleep(float(argv[2]) if len(argv) > 2 else 0.0)
        return int(argv[1])
    if mode == "idle":
        print("idle, never listening", flush=True)
        while True:
            time.sleep(3600)
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
