"""The instruction templates of the prompt generator and the response improver (paper §3, paraphrased).

Both become the user turn of a chat, rendered with the model's own chat template; targets are the assistant
turn. Pure functions.

`with_bos`: the chat template every stage renders with (models.load_tokenizer applies it, so generation on both
engines, SFT and preference training agree). A template that puts no BOS first (Zephyr's) gets one when the
tokenizer defines one: zephyr-7b-sft-full was trained with BOS first, and TRL's CPO/DPO trainers put it first
anyway, so without it generation alone would differ from training.
"""

from __future__ import annotations

from .text import format_tagged

BOS_PREFIX = "{{ bos_token }}"

GENERATOR_INSTRUCTION = (
    "Design one question or instruction that a user might ask an AI assistant, and its correct solution. "
    "Try to use these keywords: {keywords}. Give the solution with detailed reasoning. Write the question "
    "inside <question></question> tags and the solution inside <solution></solution> tags."
)

IMPROVER_INSTRUCTION = (
    "Improve the answer to the question below: correct any errors, add missing information, align it with "
    "what the question asks, and give comprehensive detail. Reply with the rewritten answer only.\n\n"
    "### Question:\n{question}\n\n### Original answer:\n{answer}\n\n### Rewritten answer:"
)


def generator_prompt(keywords: list[str]) -> list[dict]:
    return [{"role": "user", "content": GENERATOR_INSTRUCTION.format(keywords=", ".join(keywords))}]


def generator_target(question: str, solution: str) -> list[dict]:
    return [{"role": "assistant", "content": format_tagged(question, solution)}]


GENERATOR_PREFILL = "<question>"
"""Generation starts after this prefix (it opens every training target), so output is well-formed sooner."""


def improver_prompt(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": IMPROVER_INSTRUCTION.format(question=question, answer=answer)}]


def policy_prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def with_bos(template: str | None, bos_token: str | None, rendered: str) -> str | None:
    """The chat template with BOS_PREFIX put first when the tokenizer defines a BOS and the template's
    rendering (`rendered`, of any conversation) does not start with it; otherwise the template as it is."""
    if not isinstance(template, str) or not bos_token or rendered.startswith(bos_token):
        return template
    return BOS_PREFIX + template
