"""`python -m worker tokenize --model PATH [--json] TEXT` and `python -m worker detokenize --model PATH IDS...`.

tokenize prints the token ids on one line, then one line per token: id, and the token's text
(JSON-quoted; a token that is only part of a UTF-8 character shows as bytes, b'\\xe4\\xbd').
--json prints {"ids": [...], "pieces": [...], "count": N, "tokenizer": {...}}.
detokenize prints the text of the ids (--json: {"text": ...}). Bad input (unreadable model,
id outside the vocabulary) exits with status 2 and `error CODE: message`, never a traceback.
"""
from __future__ import annotations

import json
import sys

from worker.cli import run_guarded


def register(sub) -> None:
    p = sub.add_parser("tokenize", help="print the token ids (and pieces) of a text")
    _common(p)
    p.add_argument("text", help="text to tokenize ('-' reads standard input)")
    p.add_argument("--no-special", action="store_true",
                   help="do not add BOS/EOS, and read control-token text in TEXT as plain text")
    p.set_defaults(func=run_tokenize)

    d = sub.add_parser("detokenize", help="print the text of token ids")
    _common(d)
    d.add_argument("ids", nargs="+", help="token ids (decimal)")
    d.add_argument("--keep-special", action="store_true", help="also print control tokens such as BOS/EOS")
    d.set_defaults(func=run_detokenize)


def _common(p) -> None:
    p.add_argument("--model", required=True, help="GGUF model (or vocabulary) file")
    p.add_argument("--tokenizer-json", default=None, help="HF tokenizer.json to use instead of the GGUF's vocabulary")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _piece(tok, token_id: int) -> str:
    return tok.token_bytes(token_id).decode("utf-8", errors="backslashreplace")


def _shown(data: bytes) -> str:
    """A token for a terminal: quoted text, or b'\\xNN' bytes when it is part of a character."""
    try:
        return json.dumps(data.decode("utf-8"), ensure_ascii=False)
    except UnicodeDecodeError:
        return repr(data)


def _load(args):
    from worker.tokenizer import load_tokenizer

    return load_tokenizer(args.model, tokenizer_json=args.tokenizer_json)


def run_tokenize(args) -> int:
    def body() -> int:
        text = sys.stdin.read() if args.text == "-" else args.text
        tok = _load(args)
        special = not args.no_special
        ids = tok.encode(text, add_special=special, parse_special=special)
        pieces = [_piece(tok, i) for i in ids]
        if args.json:
            print(json.dumps({"ids": ids, "pieces": pieces, "count": len(ids), "tokenizer": tok.describe()},
                             ensure_ascii=False))
        else:
            print(" ".join(map(str, ids)))
            for i in ids:
                print(f"{i:>8}  {_shown(tok.token_bytes(i))}")
        return 0

    return run_guarded(args, body)


def run_detokenize(args) -> int:
    def body() -> int:
        from worker.errors import InvalidParamsError

        try:
            ids = [int(x) for x in args.ids]
        except ValueError:
            raise InvalidParamsError(f"token ids must be integers, got {' '.join(args.ids)!r}",
                                     code="INVALID_TOKEN_ID", field="ids") from None
        tok = _load(args)
        text = tok.decode(ids, skip_special=not args.keep_special)
        if args.json:
            print(json.dumps({"text": text, "count": len(ids)}, ensure_ascii=False))
        else:
            sys.stdout.write(text + "\n")
        return 0

    return run_guarded(args, body)
