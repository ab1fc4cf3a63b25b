"""A chat template without a BOS (Zephyr's) gets the tokenizer's BOS, exactly once, wherever the stages render a
chat: both engines (they tokenise the rendered text without special tokens), SFT (TRL renders with the
tokenizer's template) and preference training (TRL's CPO adds a BOS only when the prompt lacks one). Templates
that already start with BOS, and tokenizers without one, are left as they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from synpo_workloads import models, templates

pytestmark = pytest.mark.workloads

# HuggingFaceH4/zephyr-7b-sft-full's chat template: no bos_token anywhere.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}"
    "\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)


def zephyr_style_model(tiny_model: str, target: Path) -> str:
    """The tiny model with a Llama/Mistral-style tokenizer: BOS <s>, EOS </s>, Zephyr's template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    tok.chat_template = ZEPHYR_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.resize_token_embeddings(len(tok))
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return str(target)


def test_with_bos_is_pure_and_idempotent():
    assert templates.with_bos("T", "<s>", "<|user|>") == "{{ bos_token }}T"
    assert templates.with_bos("{{ bos_token }}T", "<s>", "<s><|user|>") == "{{ bos_token }}T"
    assert templates.with_bos("T", None, "<|user|>") == "T"           # the tokenizer defines no BOS
    assert templates.with_bos(None, "<s>", "") is None                # no template: the plain fallback


def test_zephyr_template_gets_exactly_one_bos_in_generation_and_training(tiny_model, tmp_path):
    from synpo_workloads.engines import SamplingParams
    from synpo_workloads.engines.hf import TransformersEngine

    ref = zephyr_style_model(tiny_model, tmp_path / "zephyr")
    tok = models.load_tokenizer(ref)
    bos = tok.bos_token_id
    chat = templates.policy_prompt("How do plants eat?")

    engine = TransformersEngine(ref, dtype="float32", batch_size=2)
    ids = tok(engine.render(chat), add_special_tokens=False)["input_ids"]  # what generate() feeds the model
    assert ids[0] == bos and ids.count(bos) == 1
    assert len(engine.generate([chat], SamplingParams(temperature=0.0, max_new_tokens=4))) == 1
    # SFT: TRL renders conversations with the tokenizer's template and adds no special tokens
    sft = tok.apply_chat_template(chat + [{"role": "assistant", "content": "Sunlight."}], tokenize=True,
                                  return_dict=True)["input_ids"]
    assert sft[0] == bos and sft.count(bos) == 1
    # the template travels with every model a stage saves, and is not prefixed twice on the next load
    tok.save_pretrained(tmp_path / "saved")
    again = models.load_tokenizer(str(tmp_path / "saved"))
    assert again.chat_template == tok.chat_template == "{{ bos_token }}" + ZEPHYR_TEMPLATE


def test_templates_that_start_with_bos_are_left_alone(tmp_path):
    from wl_helpers import build_tiny_model

    llama3 = str(build_tiny_model(tmp_path / "llama3", begin_of_text=True))  # template starts with {{ bos_token }}
    tok = models.load_tokenizer(llama3)
    ids = tok(tok.apply_chat_template(templates.policy_prompt("q"), tokenize=False, add_generation_prompt=True),
              add_special_tokens=False)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1 and not tok.chat_template.startswith("{{ bos_token }}{{ bos_token }}")
