"""Pre-tokenizer regexes for byte-level BPE, chosen by `tokenizer.ggml.pre`.

Each family is a list of patterns applied in turn, every match and every gap kept as its own
piece (HF tokenizers' Split(..., behavior="isolated")), as llama.cpp's unicode_regex_split does.
The patterns are the originals from the models' tokenizer.json files (what the models were
trained with). llama.cpp rewrites `(?i:'s|...)` as `'[sS]|...` for its own regex engine; the
two differ only on Unicode case folds such as "'ſ" (long s), where we follow the original.
"""
from __future__ import annotations

from worker.errors import UnsupportedModelError

# GPT-2: contractions, letter runs, digit runs, other symbols, whitespace (HF ByteLevel's regex).
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# Llama 3: case-insensitive contractions, digits in groups of up to three.
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2: as Llama 3 but every digit on its own.
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen3.5: combining marks stay with their letters.
QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
          r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# GPT-4o / o200k (GPT-OSS): case-aware letter runs.
GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# StarCoder / SmolLM: each digit split off first (HF Digits(individual_digits=True)), then GPT-2.
SINGLE_DIGITS = r"\p{N}"
# llama.cpp's fallback for BPE files without a known pre-tokenizer ('default').
DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]

_FAMILIES: dict[str, list[str]] = {
    "gpt2": [GPT2],
    "llama3": [LLAMA3],
    "qwen2": [QWEN2],
    "qwen35": [QWEN35],
    "gpt4o": [GPT4O],
    "starcoder": [SINGLE_DIGITS, GPT2],
    "default": DEFAULT,
}
# tokenizer.ggml.pre value -> family (names as llama.cpp's llama_vocab::load accepts them).
PRE_TO_FAMILY: dict[str, str] = {
    **dict.fromkeys(["gpt-2", "phi-2", "mpt", "olmo", "jais", "roberta-bpe"], "gpt2"),
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"], "llama3"),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "stablelm2"], "qwen2"),
    "qwen35": "qwen35",
    **dict.fromkeys(["gpt-4o", "llama4"], "gpt4o"),
    **dict.fromkeys(["smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva-7b"],
                    "starcoder"),
    "default": "default",
}
# Families whose BPE takes a whole pre-token that is in the vocabulary as is (HF ignore_merges).
IGNORE_MERGES = {"llama3"}


def family_for(pre: str) -> str:
    try:
        return PRE_TO_FAMILY[pre]
    except KeyError:
        known = ", ".join(sorted(PRE_TO_FAMILY))
        raise UnsupportedModelError(f"tokenizer.ggml.pre = {pre!r} is not a pre-tokenizer this worker knows "
                                    f"(known: {known})", code="UNSUPPORTED_TOKENIZER") from None


def patterns_for(pre: str) -> list[str]:
    return _FAMILIES[family_for(pre)]
