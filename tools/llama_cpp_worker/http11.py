"""uvicorn's h11 protocol answering an unparseable request the contract's way (docs/http-api.md,
"Every response"): `400 INVALID_HTTP_REQUEST` as JSON, with a generated X-Correlation-Id, then
the connection closed. Stock uvicorn answers those itself, in plain text, before any app sees them
(uvicorn/protocols/http/h11_impl.py, send_400_response)."""
from __future__ import annotations

import json
import uuid

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tools.llama_cpp_worker.app import narrate


class ContractH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        cid = uuid.uuid4().hex
        body = json.dumps({"code": "INVALID_HTTP_REQUEST", "message": f"the request is not valid HTTP: {msg}",
                           "field": None}).encode()
        narrate("request_rejected", cid, status=400, code="INVALID_HTTP_REQUEST", field=None)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"x-correlation-id", cid.encode()), (b"connection", b"close")]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:       # an answer had already begun
            pass
        self.transport.close()
