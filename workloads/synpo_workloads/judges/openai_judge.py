"""Pairwise LLM judge over an OpenAI-compatible endpoint, with the official `openai` client (timeouts, retries
with back-off, typed errors).

For each prompt the judge sees both outputs in a random (seeded) order, to cancel position bias, and answers
"A" or "B". The preference for the model is, when the server returns log-probabilities, the probability of the
model's letter among the two (AlpacaEval's weighted annotator reads its verdict the same way), otherwise 1 or 0
from the letter. A call that still fails after the client's retries, or a reply without a verdict, is a judge
error: it gives no preference (never a neutral 0.5) and is counted; the caller fails the stage when too many
fail. The first comparison runs alone: an endpoint that is down, unauthorised or unknown fails the stage at once
with the endpoint and the HTTP status named. The API key comes from env SYNPO_JUDGE_API_KEY (the operator maps
the Secret there); it is never logged.
"""

from __future__ import annotations

import math
import os
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import UserError

API_KEY_ENV = "SYNPO_JUDGE_API_KEY"

SYSTEM = "You are a careful, impartial judge of AI assistant answers."
TEMPLATE = (
    "Which answer better follows the user's instruction: helpful, correct, relevant, and clear? "
    "Ignore length unless it matters for quality.\n\n"
    "### Instruction:\n{instruction}\n\n### Answer A:\n{a}\n\n### Answer B:\n{b}\n\n"
    "Reply with a single letter: A or B."
)

_ONLY = re.compile(r"^\W*([AB])\W*$")
_NAMED = re.compile(r"(?i:answer|output|verdict|choice|option|response)\W{0,3}(?i:is\W{0,3})?\(?([AB])\b")
_LETTER = re.compile(r"(?<![\w'])([AB])(?![\w'])")


class JudgeError(UserError):
    """The judge cannot do its job (endpoint down, unauthorised, or too many failed comparisons)."""


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or None. Letters are matched case-sensitively (the article "a" is no verdict): a reply that is
    just the letter; else a letter named as the answer ("Answer: B", "the better answer is A"); else the one
    capital letter A or B standing alone. A reply naming both, or neither, has no verdict."""
    text = text.strip()
    if m := _ONLY.match(text):
        return m.group(1)
    named = {m.group(1) for m in _NAMED.finditer(text)}
    if len(named) == 1:
        return named.pop()
    if named:
        return None
    letters = {m.group(1) for m in _LETTER.finditer(text)}
    return letters.pop() if len(letters) == 1 else None


def letter_probabilities(top_logprobs: list[list[tuple[str, float]]]) -> dict[str, float] | None:
    """P(A), P(B) from the first generated position whose alternatives include a verdict letter, normalised over
    the two; None when no position offers one. Input: per position, (token, logprob) alternatives."""
    for alternatives in top_logprobs:
        mass = {"A": 0.0, "B": 0.0}
        for token, logprob in alternatives:
            letter = token.strip().strip("*().:")
            if letter in mass:
                mass[letter] += math.exp(logprob)
        total = mass["A"] + mass["B"]
        if total > 0:
            return {k: v / total for k, v in mass.items()}
    return None


@dataclass
class Verdicts:
    preferences: list[float | None]
    """Per comparison: the model's preference, or None for a judge error."""
    errors: int = 0
    """Calls that failed after retries."""
    unparsed: int = 0
    """Replies without a verdict."""
    weighted: int = 0
    """Preferences read from log-probabilities."""
    messages: list[str] = field(default_factory=list)
    """A few error messages, for the stage log."""

    @property
    def failed(self) -> int:
        return self.errors + self.unparsed


def _status(e: Exception) -> str:
    code = getattr(e, "status_code", None)
    return f"HTTP {code}" if code else type(e).__name__


class OpenAIJudge:
    def __init__(self, endpoint: str, model: str, *, seed: int = 0, timeout: float = 120.0, retries: int = 3,
                 workers: int = 8, logprobs: bool = True):
        from openai import OpenAI

        self.endpoint = endpoint
        self.model = model
        self.seed = seed
        self.workers = workers
        self.logprobs = logprobs
        # The key may be absent (a local vLLM server); the client insists on a string.
        self.client = OpenAI(base_url=endpoint, api_key=os.environ.get(API_KEY_ENV) or "none", timeout=timeout,
                             max_retries=retries)

    def _ask(self, content: str) -> tuple[str, dict[str, float] | None]:
        kwargs = {"logprobs": True, "top_logprobs": 5} if self.logprobs else {}
        reply = self.client.chat.completions.create(
            model=self.model, temperature=0, max_tokens=8,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}], **kwargs)
        choice = reply.choices[0]
        probs = None
        if self.logprobs and choice.logprobs and choice.logprobs.content:
            probs = letter_probabilities([[(t.token, t.logprob) for t in (pos.top_logprobs or [])]
                                          or [(pos.token, pos.logprob)] for pos in choice.logprobs.content])
        return str(choice.message.content or ""), probs

    def _one(self, i: int, prompt: str, model_out: str, other_out: str) -> tuple[str, float | None, str | None]:
        """(outcome, preference, message): outcome is ok, weighted, error or unparsed. Fatal errors raise."""
        import openai

        swap = random.Random(self.seed * 1_000_003 + i).random() < 0.5
        a, b = (other_out, model_out) if swap else (model_out, other_out)
        model_is = "B" if swap else "A"
        try:
            text, probs = self._ask(TEMPLATE.format(instruction=prompt, a=a, b=b))
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise JudgeError(f"openai judge at {self.endpoint} (model {self.model}): {_status(e)}: "
                             f"{_message(e)}") from e
        except openai.OpenAIError as e:
            return "error", None, f"{_status(e)}: {_message(e)}"
        if probs is not None:
            return "weighted", probs[model_is], None
        verdict = parse_verdict(text)
        if verdict is None:
            return "unparsed", None, f"no verdict in reply {text[:80]!r}"
        return "ok", 1.0 if verdict == model_is else 0.0, None

    def prefer(self, prompts: list[str], model_outputs: list[str], other_outputs: list[str]) -> Verdicts:
        n = len(prompts)
        if n == 0:
            return Verdicts([])
        first = self._first(prompts[0], model_outputs[0], other_outputs[0])
        with ThreadPoolExecutor(self.workers) as pool:
            rest = list(pool.map(self._one, range(1, n), prompts[1:], model_outputs[1:], other_outputs[1:]))
        out = Verdicts([])
        for outcome, pref, message in [first, *rest]:
            out.preferences.append(pref)
            out.errors += outcome == "error"
            out.unparsed += outcome == "unparsed"
            out.weighted += outcome == "weighted"
            if message and len(out.messages) < 5:
                out.messages.append(message)
        return out

    def _first(self, prompt: str, model_out: str, other_out: str):
        """The first comparison, alone: a dead endpoint fails here, before n calls time out one by one."""
        outcome = self._one(0, prompt, model_out, other_out)
        if outcome[0] == "error" and self.logprobs and str(outcome[2]).startswith(("HTTP 400", "HTTP 422")):
            # Some servers reject logprobs; ask again without them before giving up.
            self.logprobs = False
            outcome = self._one(0, prompt, model_out, other_out)
        if outcome[0] == "error":
            raise JudgeError(f"openai judge at {self.endpoint} (model {self.model}) failed its first comparison: "
                             f"{outcome[2]}")
        return outcome


def _message(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        msg = inner.get("message") if isinstance(inner, dict) else None
        if msg:
            return str(msg)[:300]
    return str(e)[:300]
