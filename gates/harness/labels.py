"""Allure labels for one test: exactly one gate (epic), one feature and one story, so each test
appears once in the Behaviors tree; its other stories and gate checks become tags.

Allure's Behaviors tree lists a test under every epic x feature x story combination of its labels
(allure2 `BehaviorsPlugin`), so a test labelled with two stories of two gates would be listed four
times. The primary label is the gate check when the test implements one, else its first story.
"""
from __future__ import annotations

from dataclasses import dataclass

GATE_CHECKS_FEATURE = "Gate checks"
NO_GATE = "No gate"


@dataclass(frozen=True)
class StoryIndex:
    """What the labels need from gates/stories.json and the gate manifests."""

    story_team: dict[str, str]
    story_gate: dict[str, int]        # the gate that requires the story (else the plan's gate)
    check_gate: dict[str, int]

    @classmethod
    def build(cls, manifests: dict[int, dict], stories: list[dict]) -> StoryIndex:
        story_gate = {s["id"]: s["gate"] for s in stories if isinstance(s.get("gate"), int)}
        for gate, manifest in sorted(manifests.items(), reverse=True):   # the lowest requiring gate wins
            story_gate.update({s: gate for s in manifest.get("stories", [])})
        check_gate = {c["id"]: gate for gate, m in manifests.items() for c in m.get("checks", [])}
        return cls({s["id"]: s["team"] for s in stories}, story_gate, check_gate)


def behavior_labels(index: StoryIndex, stories: list[str], checks: list[str]) -> list[tuple[str, str]]:
    """[(label type, value)]: one epic, one feature, one story, then tags for the rest."""
    if checks:
        primary, gate, feature = checks[0], index.check_gate.get(checks[0]), GATE_CHECKS_FEATURE
    elif stories:
        primary, gate = stories[0], index.story_gate.get(stories[0])
        feature = index.story_team.get(primary, "unknown team")
    else:
        return []
    labels = [("epic", f"Gate {gate}" if gate is not None else NO_GATE), ("feature", feature), ("story", primary)]
    labels += [("tag", other) for other in [*checks, *stories] if other != primary]
    return labels


class Shown:
    """A parameter value Allure shows by its repr: allure-commons shows every bytes value as
    "<class 'bytes'>" (`allure_commons.utils.represent`), which hides which case a test ran."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def readable_bytes(value: bytes | bytearray, limit: int = 40) -> str:
    """b'...' as Python writes it, shortened in the middle: long runs stay distinguishable by length."""
    text = repr(bytes(value))
    if len(text) <= limit:
        return text
    return f"{bytes(value[:16])!r}...({len(value)} bytes)"
