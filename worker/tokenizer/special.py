"""Special and added tokens: found in the text before any model-specific tokenization.

The partition follows llama.cpp's tokenizer_st_partition: special tokens are tried longest
first; each occurrence cuts the text fragment around it. User-defined (added) tokens are always
matched; control and unknown tokens only when `parse_special` is true (prompt text written by a
chat template), so that user text cannot forge control tokens when it is false. A token with
`rstrip` (`lstrip`) swallows the whitespace after (before) it, as HF's AddedToken does.
"""
from __future__ import annotations

from dataclasses import dataclass

from worker.tokenizer.gguf_vocab import TokenType

_ASCII_SPACE = " \t\n\v\f\r"  # C isspace(), what llama.cpp strips
_PREFIX = 3


@dataclass(frozen=True)
class SpecialToken:
    text: str
    id: int
    control: bool          # control/unknown: matched only when parse_special
    lstrip: bool = False
    rstrip: bool = False


Fragment = str | int  # plain text, or a token id already decided


class SpecialSplitter:
    def __init__(self, specials: list[SpecialToken]):
        # Longest first; equal lengths by id, so the order is reproducible.
        self.specials = sorted((s for s in specials if s.text), key=lambda s: (-len(s.text), s.id))
        # Searching a long text for hundreds of tokens is slow; most share a few opening
        # characters ('<|', '[PA'), so look for those first and skip tokens that cannot occur.
        self._prefixes = sorted({s.text[:_PREFIX] for s in self.specials})

    def split(self, text: str, parse_special: bool = True) -> list[Fragment]:
        fragments: list[Fragment] = [text] if text else []
        present = {p for p in self._prefixes if p in text}
        for special in self.specials:
            if special.control and not parse_special:
                continue
            if special.text[:_PREFIX] not in present:
                continue
            if not any(isinstance(f, str) and special.text in f for f in fragments):
                continue
            fragments = [piece for f in fragments for piece in self._cut(f, special)]
        return fragments

    @staticmethod
    def _cut(fragment: Fragment, special: SpecialToken) -> list[Fragment]:
        if isinstance(fragment, int) or special.text not in fragment:
            return [fragment]
        out: list[Fragment] = []
        pos = 0
        while True:
            match = fragment.find(special.text, pos)
            if match < 0:
                break
            left = fragment[pos:match]
            if special.lstrip:
                left = left.rstrip(_ASCII_SPACE)
            if left:
                out.append(left)
            out.append(special.id)
            pos = match + len(special.text)
            if special.rstrip:
                while pos < len(fragment) and fragment[pos] in _ASCII_SPACE:
                    pos += 1
        if pos < len(fragment):
            out.append(fragment[pos:])
        return out


def gguf_special_tokens(tokens: list[str], types: list[int], model_name: str) -> list[SpecialToken]:
    """Control, user-defined and unknown tokens of a GGUF vocabulary, with llama.cpp's per-model
    strip attributes (GGUF does not store them; llama.cpp keys them on general.name)."""
    specials = []
    name = model_name.lower()
    phi3 = "phi-3" in name or "phi3" in name
    for i, (text, kind) in enumerate(zip(tokens, types)):
        if kind not in (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN):
            continue
        # Phi-3's chat tokens (<|user|>, <|end|>, ...) swallow the newline after them.
        rstrip = phi3 and text not in ("<unk>", "<s>", "<|endoftext|>")
        specials.append(SpecialToken(text, i, control=kind != TokenType.USER_DEFINED, rstrip=rstrip))
    return specials
