"""The contract's text rules for a token stream (docs/http-api.md, `token` events): each event's
text is whole UTF-8 characters, and text that could be the start of a stop string is held back
until it is decided."""
from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stops: list[str]):
        self.stops = stops
        # errors="replace": bytes that can never form a character become U+FFFD where a one-shot
        # decode of all the bytes puts them; an unfinished character waits for its next bytes.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""

    def push(self, piece: bytes) -> tuple[str, str | None]:
        """The text released by one token, and the stop string it completed (or None)."""
        self._held += self._decoder.decode(piece)
        return self._release()

    def finish(self) -> tuple[str, str | None]:
        """At the end of the job: everything held, an unfinished character as one U+FFFD."""
        self._held += self._decoder.decode(b"", final=True)
        text, stop = self._release()
        if stop is None:
            text, self._held = text + self._held, ""
        return text, stop

    def _release(self) -> tuple[str, str | None]:
        found = [(self._held.find(s), n, s) for n, s in enumerate(self.stops) if s in self._held]
        if found:
            at, _, stop = min(found)
            text, self._held = self._held[:at], ""
            return text, stop
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(self._held) + 1))
                    if self._held.endswith(s[:k])), default=0)
        cut = len(self._held) - keep
        text, self._held = self._held[:cut], self._held[cut:]
        return text, None
