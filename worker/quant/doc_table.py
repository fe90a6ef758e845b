"""The quant-format table of docs/gguf.md, rendered from the registry (worker/quant/formats.py).

`python -m worker.quant.doc_table` rewrites the table between the markers in docs/gguf.md;
a test checks the committed table is the rendered one, so the docs cannot drift from the code.
"""
from __future__ import annotations

import sys
from pathlib import Path

from worker.quant.formats import FORMATS

BEGIN, END = "<!-- quant-formats:begin -->", "<!-- quant-formats:end -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "gguf.md"


def render() -> str:
    rows = ["| type | ggml id | values per block | bytes per block | bits per value | kernel "
            "| block layout (in order) |",
            "|---|---|---|---|---|---|---|"]
    for fmt in FORMATS.values():
        rows.append(f"| {fmt.name} | {int(fmt.qtype)} | {fmt.block_size} | {fmt.type_size} | "
                    f"{fmt.bits_per_value:g} | `{fmt.kernel}` | {fmt.layout} |")
    return "\n".join(rows)


def replace_table(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{render()}\n{END}{tail}"


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DOC
    path.write_text(replace_table(path.read_text()))
