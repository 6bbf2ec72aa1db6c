"""The REST transport: HTTP/1.1 on aiohttp's low-level server (asyncio, C llhttp parser), answering with
orjson (JSON written in C, numpy arrays directly): maintained, and 3-4x less CPU per request than the stdlib
equivalents. Deadlines for slow clients, body limits, drain; what a request means is rest_api.RestApi's business.
Also serves the Prometheus page."""
import asyncio
import logging
import socket
from concurrent.futures import Executor
from typing import Any, List, Optional

import orjson
from aiohttp import web, web_protocol

from serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from serving.rest_api import RestApi

log = logging.getLogger(__name__)


def _json_response(status: int, doc: Any, close: bool = False) -> web.Response:
    """A JSON answer (numpy arrays written by orjson); `close`: the connection closes after it."""
    response = web.Response(status=status, body=orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
                            content_type="application/json")
    if close:
        response.force_close()
    return response


def _error_bytes(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 error response that closes the connection, for answers written outside a request."""
    body = orjson.dumps({"error": message})
    reason = {400: "Bad Request", 408: "Request Timeout"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


class _Connection(web_protocol.RequestHandler):
    """aiohttp's connection protocol with a header deadline that answers 408 (aiohttp only closes idle
    connections) and JSON error bodies for requests llhttp cannot parse; relies on aiohttp 3.14's internals
    (`_process_keepalive`, `_request_in_progress`, `_payload_parser`), pinned in requirements.lock."""

    def __init__(self, manager: web.Server, **kwargs: Any):
        super().__init__(manager, **kwargs)
        self.partial = False  # bytes of a request arrived and its headers are not complete yet

    def data_received(self, data: bytes) -> None:
        if data and not self._request_in_progress and self._payload_parser is None:
            self.partial = True
        super().data_received(data)

    def _process_keepalive(self) -> None:
        # The keep-alive timer runs from the connection's start and from each response to the next request's
        # headers; when it fires while a request's headers are still coming in, that client was too slow: 408.
        if self.partial and self.transport is not None and not self._request_in_progress and not self._force_close:
            now, close_time = self._loop.time(), self._next_keepalive_close_time
            if now >= close_time and self._waiter is not None and not self._waiter.done():
                self.transport.write(_error_bytes(408, "Timed out reading the request headers"))
        super()._process_keepalive()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: Optional[BaseException] = None,
                     message: Optional[str] = None) -> web.StreamResponse:
        """TF Serving's {"error": ...} body instead of aiohttp's text, without tracebacks or class names."""
        if status == 500:
            log.error("REST request failed", exc_info=exc)
            text = "Internal error"
        else:
            text = f"Malformed HTTP request: {(message or getattr(exc, 'message', '') or '').splitlines()[0]}"
        return _json_response(status, {"error": text}, close=True)


class _WebServer(web.Server):
    """aiohttp's low-level server making `_Connection`s; requests may have bodies up to `max_body` bytes."""

    def __init__(self, handler, max_body: int, **kwargs: Any):
        super().__init__(handler, request_factory=self._request, **kwargs)
        self.max_body = max_body

    def _request(self, message, payload, protocol, writer, task) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, self._loop, client_max_size=self.max_body)

    def __call__(self) -> _Connection:
        return _Connection(self, loop=self._loop, **self._kwargs)


class RestServer:
    """HTTP/1.1 REST server on the running event loop. Small requests run on the loop (a few hundred
    microseconds of CPU, no thread hop), requests with bodies over `inline_max_bytes` in `pool`, so they never
    stall the small ones of either transport. Each connection gets `timeout` seconds for a request's headers
    (from its first byte or the previous response) and `timeout` for its body, else 408; idle keep-alive
    connections close after `timeout`."""

    def __init__(self, api: RestApi, metrics: Metrics, metrics_path: Optional[str], max_body: int,
                 timeout: float, pool: Executor, inline_max_bytes: int):
        self.api, self.metrics, self.metrics_path, self.max_body = api, metrics, metrics_path, max_body
        self.timeout, self.pool, self.inline_max_bytes = timeout, pool, inline_max_bytes
        self.draining = False
        self._web: Optional[_WebServer] = None
        self._listener: Optional[asyncio.AbstractServer] = None
        self._socket: Optional[socket.socket] = None
        self._accepted: List[asyncio.Task] = []

    async def start(self, host: str, port: int, backlog: int) -> int:
        """Listen on host:port; returns the bound port."""
        self._web = _WebServer(self._handle, self.max_body, keepalive_timeout=self.timeout, access_log=None,
                               lingering_time=min(self.timeout, 10.0))
        # Our own listening socket, so that stop_listening() can take the connections the kernel already accepted.
        self._socket = socket.create_server((host, port), backlog=backlog, reuse_port=False)
        self._socket.setblocking(False)
        self._listener = await asyncio.get_running_loop().create_server(self._web, sock=self._socket)
        return self._socket.getsockname()[1]

    def stop_listening(self) -> None:
        """Close the listening socket: new connections are refused from now on; the ones the kernel already
        accepted (in the backlog) are served like the others."""
        if self._listener is None or self.draining:
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:  # BlockingIOError: the backlog is empty
                break
            conn.setblocking(False)
            self._accepted.append(loop.create_task(loop.connect_accepted_socket(self._web, conn)))
        self._listener.close()

    async def drain(self, timeout: float) -> None:
        """Let every request already received finish (up to `timeout`), close idle connections, then all."""
        self.stop_listening()
        if self._web is None:
            return
        await asyncio.gather(*self._accepted, return_exceptions=True)
        if self._accepted:
            await asyncio.sleep(0.05)  # connections taken from the backlog: their request is on its way
        for _ in range(2):  # let the loop read requests already in the connections' socket buffers
            await asyncio.sleep(0)
        self._web.pre_shutdown()  # idle connections close now, busy ones after their response
        await self._web.shutdown(timeout)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        request.protocol.partial = False
        try:
            if request.content_length is not None and request.content_length > self.max_body:
                return self._too_large(request.content_length)
            if request.body_exists and request.headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits 1 s for this
                request.writer.output_size = 0  # the response proper has not started (as aiohttp's web app does)
            # every method's body is read (never parsed as a next request), within the body deadline
            body = await asyncio.wait_for(request.read(), self.timeout) if request.body_exists else b""
        except asyncio.TimeoutError:
            return _json_response(408, {"error": f"Timed out reading the request body ({self.timeout:g} s)"},
                                  close=True)
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(None)
        method, path = request.method, request.raw_path.split("?", 1)[0]
        if method == "GET" and self.metrics_path and path == self.metrics_path:
            response = web.Response(body=self.metrics.exposition())
            response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        elif not path.lower().startswith("/v1/"):
            response = _json_response(404, {"error": f"Not found: {method} {path}"})
        else:
            if len(body) <= self.inline_max_bytes:
                status, doc = self.api.handle(method, path, body)
            else:
                status, doc = await asyncio.get_running_loop().run_in_executor(
                    self.pool, self.api.handle, method, path, body)
            response = _json_response(status, doc)
        if self.draining:
            response.force_close()
        return response

    def _too_large(self, length: Optional[int]) -> web.Response:
        size = f"of {length} bytes " if length is not None else ""
        return _json_response(413, {"error": f"Request body {size}exceeds the limit of {self.max_body} bytes"},
                              close=True)
