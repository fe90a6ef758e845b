"""GT-003 tokenizer metadata exposure: every backend tells the rest of the worker what it needs -
kind, vocabulary size, BOS/EOS ids, the end-of-generation set, add-BOS/EOS flags and the chat
template - and renders the model's chat template as transformers' apply_chat_template does
(sandboxed Jinja, trim_blocks/lstrip_blocks, raise_exception, bos_token/eos_token)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures.tokenizer_data import vocab_metadata
from fixtures.tokenizer_oracles import tokenizer_json_from_transformers, transformers_from_gguf
from fixtures.tokenizer_testing import PROPERTY, need_smollm2, need_vocab, smollm2_tokenizer, vocab_tokenizer
from worker.errors import InvalidParamsError
from worker.tokenizer import load_tokenizer

pytestmark = pytest.mark.story("GT-003")


def test_describe_reports_kind_size_and_special_ids():
    smol = smollm2_tokenizer()
    d = smol.describe()
    assert d == {"kind": "bpe", "vocab_size": 49152, "bos_id": 1, "eos_id": 2, "eos_ids": [0, 2],
                 "add_bos": False, "add_eos": False, "has_chat_template": True}
    phi = vocab_tokenizer("phi-3").describe()
    got = (phi["kind"], phi["vocab_size"], phi["bos_id"], phi["eos_id"], phi["add_bos"])
    assert got == ("spm", 32064, 1, 32000, True)


def test_tokenizer_json_backend_reports_the_same_as_transformers():
    ref = transformers_from_gguf("smollm2", str(need_smollm2()))
    tok = load_tokenizer(need_smollm2(), tokenizer_json=tokenizer_json_from_transformers("smollm2", ref))
    assert tok.kind == "hf" and tok.vocab_size == len(ref)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    specials = {i for i, t in ref.added_tokens_decoder.items() if t.special}
    assert {i for i in range(tok.vocab_size) if tok.is_special(i)} == specials


def _hf_chat(ref, messages, add_generation_prompt):
    return ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Write a haiku"}, {"role": "assistant", "content": "Old pond\nfrog jumps"},
     {"role": "user", "content": "Another, in 日本語 please 🙂"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_chat_template_renders_as_transformers(messages, add_generation_prompt):
    ref = transformers_from_gguf("smollm2", str(need_smollm2()))
    ours = smollm2_tokenizer().apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert ours == _hf_chat(ref, messages, add_generation_prompt)


roles = st.sampled_from(["system", "user", "assistant"])
contents = st.text(max_size=30)


@PROPERTY
@given(messages=st.lists(st.fixed_dictionaries({"role": roles, "content": contents}), min_size=1, max_size=5),
       add_generation_prompt=st.booleans())
def test_generated_conversations_render_as_transformers(messages, add_generation_prompt):
    ref = transformers_from_gguf("smollm2", str(need_smollm2()))
    assert smollm2_tokenizer().apply_chat_template(messages, add_generation_prompt) == \
        _hf_chat(ref, messages, add_generation_prompt)


@pytest.mark.parametrize("messages", CONVERSATIONS[:3])
def test_phi3_template_with_bos_token_renders_as_transformers(messages):
    ref = transformers_from_gguf("phi-3", str(need_vocab("phi-3")))
    ours = vocab_tokenizer("phi-3").apply_chat_template(messages)
    assert ours == _hf_chat(ref, messages, True)
    assert ours.startswith("<s>")


def test_qwen2_template_renders_as_transformers_renderer():
    from transformers.utils.chat_template_utils import render_jinja_template

    need_vocab("qwen2")
    template = vocab_metadata("qwen2")["tokenizer.chat_template"]
    tok = vocab_tokenizer("qwen2")
    for messages in CONVERSATIONS[:3]:
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                            add_generation_prompt=True, **tok.special_token_texts())
        assert tok.apply_chat_template(messages) == rendered[0]


TEMPLATE_FEATURES = (
    "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
    "{{ m['role'] | upper }}={{ m | tojson }}\n{% endfor %}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system messages here') }}{% endif %}"
    "{{ bos_token }}|{{ eos_token }}"
)


def test_template_features_match_transformers():
    ref = transformers_from_gguf("smollm2", str(need_smollm2()))
    tok = smollm2_tokenizer()
    msgs = [{"role": "user", "content": "naïve «quote» 👍"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}]
    ours = tok.apply_chat_template(msgs, template=TEMPLATE_FEATURES)
    assert ours == ref.apply_chat_template(msgs, chat_template=TEMPLATE_FEATURES, tokenize=False)
    assert "naïve" in ours  # tojson keeps non-ASCII text


def test_raise_exception_and_sandbox_escapes_are_refused():
    tok = smollm2_tokenizer()
    with pytest.raises(InvalidParamsError) as info:
        tok.apply_chat_template([{"role": "system", "content": "x"}], template=TEMPLATE_FEATURES)
    assert info.value.code == "CHAT_TEMPLATE_ERROR" and "no system messages here" in info.value.message
    with pytest.raises(InvalidParamsError) as info:
        tok.apply_chat_template([{"role": "user", "content": "x"}],
                                template="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    assert info.value.code == "CHAT_TEMPLATE_ERROR"
    for bad in ("not a list", [], ["not a dict"]):
        with pytest.raises(InvalidParamsError) as info:
            tok.apply_chat_template(bad)
        assert info.value.field == "messages"


def test_a_model_without_template_says_so():
    tok = vocab_tokenizer("gpt-2")
    assert tok.chat_template is None
    with pytest.raises(InvalidParamsError) as info:
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert info.value.code == "NO_CHAT_TEMPLATE"
