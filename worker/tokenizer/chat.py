"""Chat templates: a model's own Jinja prompt format (`tokenizer.chat_template`), rendered as
transformers' apply_chat_template renders it.

Same environment as transformers: a sandboxed Jinja with trim_blocks and lstrip_blocks, loop
controls, `raise_exception`, `strftime_now`, a `tojson` filter that keeps non-ASCII text, and
the variables messages, tools, documents, add_generation_prompt, bos_token, eos_token, ...
Templates come from model files (untrusted), hence the sandbox.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from worker.errors import InvalidParamsError


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidParamsError(f"the model's chat template does not parse: {exc}",
                                 code="CHAT_TEMPLATE_ERROR", field="chat_template") from exc


def render_chat(template: str, messages: list[dict], *, add_generation_prompt: bool = True,
                special_tokens: dict[str, str] | None = None, **kwargs) -> str:
    """The prompt text for `messages` ([{"role": ..., "content": ...}, ...])."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidParamsError("messages must be a list of objects with 'role' and 'content'",
                                 code="INVALID_PARAMS", field="messages")
    if not messages:  # transformers refuses an empty conversation too
        raise InvalidParamsError("messages must hold at least one message", code="INVALID_PARAMS", field="messages")
    compiled = compile_template(template)
    try:
        context = {"messages": messages, "tools": None, "documents": None,
                   "add_generation_prompt": add_generation_prompt, **(special_tokens or {}), **kwargs}
        return compiled.render(**context)
    except jinja2.TemplateError as exc:
        raise InvalidParamsError(f"the chat template refused these messages: {exc}",
                                 code="CHAT_TEMPLATE_ERROR", field="messages") from exc
