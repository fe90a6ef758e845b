"""Attach evidence (SSE transcripts, numeric diffs) to the current test's Allure result.

A no-op when allure-pytest is not active, so tests can always call these.
"""
from __future__ import annotations

import json


def attach_text(name: str, text: str) -> None:
    try:
        import allure

        allure.attach(text, name=name, attachment_type=allure.attachment_type.TEXT)
    except Exception:
        pass


def attach_json(name: str, data) -> None:
    try:
        import allure

        allure.attach(json.dumps(data, indent=1, default=str), name=name,
                      attachment_type=allure.attachment_type.JSON)
    except Exception:
        pass
