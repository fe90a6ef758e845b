"""uvicorn's h11 protocol, with the worker's JSON error shape for requests it cannot parse.

uvicorn answers a malformed request (bad request line, bad header, bad Content-Length, broken
chunked encoding) itself, before the app sees it, with a plain-text 400. This subclass answers
those the way the app answers everything else: a JSON body {"code", "message", "field"}, an
X-Correlation-Id header, and a `request_rejected` narration line.
"""
from __future__ import annotations

import json
import uuid

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from worker.narration import correlation_scope, narrate

CODE = "INVALID_HTTP_REQUEST"
MESSAGE = "malformed HTTP request (request line, header, Content-Length or chunked encoding)"


class JSONErrorH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        cid = uuid.uuid4().hex              # the request could not be parsed, so no id of its own
        with correlation_scope(cid):
            narrate("request_rejected", status=400, code=CODE, field=None, message=MESSAGE)
        body = json.dumps({"code": CODE, "message": MESSAGE, "field": None}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"x-correlation-id", cid.encode()), (b"connection", b"close")]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:      # a response had already begun: nothing more can be said
            pass
        self.transport.close()
