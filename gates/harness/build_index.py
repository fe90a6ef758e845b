"""Build gates/stories.json from the plan in ../shared/seeds (run once; the JSON is committed).

The plan lists story cards by file name (FT-001-http-server-setup.md) and sprint folders with
story counts. We derive:
  team    from the prefix (FT Foundation, LT Llama, GT GPT);
  sprint  from the plan's sprint folders, split at story numbers chosen by title so that each
          gate sprint ends at its checkpoint (the plan's per-sprint counts do not add up exactly);
  gate    from the team's gate checkpoint stories: a story belongs to the first checkpoint at or
          after it (FT-027/LT-020/GT-022 close gate 1, FT-032/LT-027/GT-028 gate 2, ...).
Stories that are process, not behaviour (research, checkpoints, bug-fix buffers) are marked
testable=false with the reason; gates do not require them.

Usage: python -m gates.harness.build_index [SEED_FILE]
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

TEAMS = {"FT": "Foundation", "LT": "Llama", "GT": "GPT"}
SPRINTS = {  # sprint folder names from the plan; last story number of each, aligned to the gates
    "FT": [("sprint-1-http-foundation", 5), ("sprint-2-ffi-layer", 12), ("sprint-3-shared-kernels", 22),
           ("sprint-4-integration-gate1", 27), ("sprint-5-support-prep", 32), ("sprint-6-adapter-gate3", 38),
           ("sprint-7-final-integration", 999)],
    "LT": [("sprint-0-prep-work", 0), ("sprint-1-gguf-foundation", 6), ("sprint-2-gguf-bpe-tokenizer", 10),
           ("sprint-3-utf8-llama-kernels", 14), ("sprint-4-gqa-gate1", 20), ("sprint-5-qwen-integration", 27),
           ("sprint-6-phi3-adapter", 34), ("sprint-7-final-integration", 999)],
    "GT": [("sprint-0-prep-work", 0), ("sprint-1-hf-tokenizer", 7), ("sprint-2-gpt-kernels", 16),
           ("sprint-3-mha-gate1", 22), ("sprint-4-gpt-basic", 28), ("sprint-5-mxfp4-dequant", 31),
           ("sprint-6-mxfp4-integration", 38), ("sprint-7-adapter-e2e", 41), ("sprint-8-final-integration", 999)],
}
CHECKPOINTS = {
    "FT": [(27, 1), (32, 2), (38, 3), (999, 4)],
    "LT": [(20, 1), (27, 2), (34, 3), (999, 4)],
    "GT": [(22, 1), (28, 2), (41, 3), (999, 4)],
}
NOT_TESTABLE = {
    "LT-000": "research (GGUF format study): its output is docs/gguf.md",
    "GT-000": "research (MXFP4 spec study): its output is docs/gguf.md",
    "FT-025": "the gate-1 validation suite itself (gates/gate1)",
    "FT-027": "gate checkpoint: decided by the gate board",
    "FT-030": "bug-fix buffer, no behaviour of its own",
    "FT-032": "gate checkpoint: decided by the gate board",
    "FT-038": "gate checkpoint: decided by the gate board",
    "FT-046": "final validation: the gate 4 board itself",
    "FT-047": "gate checkpoint: decided by the gate board",
    "LT-020": "gate participation: decided by the gate board",
    "LT-027": "gate checkpoint: decided by the gate board",
    "LT-034": "gate participation: decided by the gate board",
    "GT-022": "gate participation: decided by the gate board",
    "GT-028": "gate checkpoint: decided by the gate board",
    "GT-041": "gate participation: decided by the gate board",
}


def parse(seed_text: str) -> list[dict]:
    found = re.findall(r"\b((FT|LT|GT)-(\d{3}))-([a-z0-9-]+)\.md", seed_text)
    stories, seen = [], set()
    for story_id, team, number, slug in found:
        if story_id in seen:
            continue
        seen.add(story_id)
        stories.append({"id": story_id, "team_code": team, "number": int(number),
                        "title": slug.replace("-", " ")})
    out = []
    for team, sprints in SPRINTS.items():
        for s in (s for s in stories if s["team_code"] == team):
            gate = next(g for last, g in CHECKPOINTS[team] if s["number"] <= last)
            reason = NOT_TESTABLE.get(s["id"])
            out.append({
                "id": s["id"], "title": s["title"], "team": TEAMS[team],
                "sprint": next(name for name, last in sprints if s["number"] <= last),
                "gate": gate, "testable": reason is None,
                **({"not_testable_reason": reason} if reason else {}),
            })
    return out


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent.parent
    seed = Path(argv[0]) if argv else next((here.parent.parent / "shared" / "seeds").glob("*.txt"))
    index = parse(seed.read_text())
    (here / "stories.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"{len(index)} stories -> {here / 'stories.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
