"""GPT-2's byte <-> printable-character map used by byte-level BPE vocabularies.

Each byte 0..255 is written in the vocabulary as one printable character: printable Latin-1
bytes stand for themselves, the rest (controls, space, ...) are shifted to U+0100 and up
(space -> 'Ġ', newline -> 'Ċ'). This is the table from OpenAI's GPT-2 encoder.py that HF
tokenizers' ByteLevel and llama.cpp's unicode_byte_to_utf8 also implement.
"""
from __future__ import annotations


def _bytes_to_unicode() -> dict[int, str]:
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, shift = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


BYTE_TO_CHAR: dict[int, str] = _bytes_to_unicode()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_CHAR.items()}


# Byte-level characters -> the Latin-1 character of their byte, for a fast str.translate.
# Latin-1 characters that are not byte-level characters go to U+FFFF so that encoding fails and
# the exact slow path below handles them.
_TO_LATIN1 = {**{c: "\uffff" for c in range(256)}, **{ord(c): b for c, b in CHAR_TO_BYTE.items()}}


def piece_to_bytes(piece: str) -> bytes:
    """Raw bytes of a byte-level vocabulary entry ('Ġhello' -> b' hello').

    A character outside the 256-entry map (a malformed vocabulary) stands for its own UTF-8
    bytes, so decoding never fails.
    """
    try:
        return piece.translate(_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        pass
    out = bytearray()
    for ch in piece:
        b = CHAR_TO_BYTE.get(ch)
        if b is None:
            out += ch.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)
