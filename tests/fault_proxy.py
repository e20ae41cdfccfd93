"""A loopback HTTP proxy in front of the real vLLM server that injects faults a real
server does not produce on demand: garbled, truncated or miscounted answers, 5xx,
dropped connections, and running a callback (stopping the real server) at a chosen
request.  Every other request is forwarded unchanged.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import deque
from collections.abc import Callable

import httpx

# What the proxy does with the next /completions requests, in order (then: forward).
FAULTS = ("not-json", "truncated", "http-500", "wrong-count", "bad-logprobs", "few-logprobs", "mass-unbounded",
          "huge-token-id", "error-as-success", "bad-encoding", "trickle", "drop", "forward")  # fmt: skip
TRICKLE_S = 0.05  # "trickle": seconds between the bytes of the answer


class FaultProxy:
    """``with FaultProxy(upstream) as proxy:`` serves on ``proxy.url`` (``…/v1``)."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.faults: deque[str | Callable[[], None]] = deque()
        self.before_each: Callable[[], None] | None = None  # run before every /completions request
        self.completions = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                proxy._forward(self, None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy._forward(self, body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _forward(self, handler: http.server.BaseHTTPRequestHandler, body: bytes | None) -> None:
        fault = None
        if handler.path.endswith("/completions"):
            self.completions += 1
            if self.before_each is not None:
                self.before_each()
            fault = self.faults.popleft() if self.faults else None
        if callable(fault):
            fault()
            fault = None
        if fault == "drop":
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        if fault == "http-500":
            return _answer(handler, 500, b'{"error": {"message": "injected"}}')
        if fault == "error-as-success":  # a gateway's error sent with 200
            return _answer(handler, 200, b'{"error": {"message": "injected"}}')
        try:
            response = httpx.request(handler.command, self.upstream + handler.path, content=body,
                                     headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
        except httpx.TransportError:
            return _answer(handler, 502, b'{"error": {"message": "upstream down"}}')
        content = response.content
        if fault == "not-json":
            content = b"<html>502 Bad Gateway</html>"
        elif fault == "truncated":  # the promised length, half the bytes, then the connection closes
            handler.send_response(response.status_code)
            handler.send_header("Content-Length", str(len(content)))
            handler.end_headers()
            handler.wfile.write(content[: len(content) // 2])
            handler.close_connection = True
            return
        elif fault == "wrong-count":
            answer = response.json()
            answer["choices"] = answer["choices"][:-1]
            content = json.dumps(answer).encode()
        elif fault == "bad-logprobs":
            answer = response.json()
            table = answer["choices"][0]["logprobs"]["top_logprobs"][0]
            table[next(iter(table))] = 3.0  # a probability above 1
            content = json.dumps(answer).encode()
        elif fault in ("few-logprobs", "mass-unbounded"):
            answer = response.json()
            tables = answer["choices"][0]["logprobs"]["top_logprobs"]
            likeliest = max(tables[0].items(), key=lambda item: item[1])
            if fault == "few-logprobs":  # one of the k asked: its k-th largest is unknown
                tables[0] = dict([likeliest])
            else:  # the others' mass vanishes: the rest would have to hold it, beyond the bound of the k-th
                tables[0] = {key: (value if key == likeliest[0] else -9999.0) for key, value in tables[0].items()}
            content = json.dumps(answer).encode()
        elif fault == "huge-token-id":  # an id past int64, with a negligible probability
            answer = response.json()
            answer["choices"][0]["logprobs"]["top_logprobs"][0][f"token_id:{2**64}"] = -50.0
            content = json.dumps(answer).encode()
        elif fault == "bad-encoding":  # announced gzip, sent plain
            return _answer(handler, response.status_code, content, {"Content-Encoding": "gzip"})
        elif fault == "trickle":  # a byte at a time: each read is quick, the whole answer is not
            return _answer(handler, response.status_code, content, pause=TRICKLE_S)
        _answer(handler, response.status_code, content)


def _answer(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    content: bytes,
    headers: dict[str, str] | None = None,
    pause: float | None = None,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(content)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    if pause is None:
        handler.wfile.write(content)
        return
    try:
        for i in range(len(content)):
            handler.wfile.write(content[i : i + 1])
            handler.wfile.flush()
            time.sleep(pause)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up: what the fault is for
        handler.close_connection = True
