"""Pairwise LLM judge over an OpenAI-compatible endpoint, with the official `openai` client (timeouts, retries
with back-off, typed errors).

Every pair is judged in both orders (model's answer as A, then as B: AlpacaEval/Arena-Hard practice against
position bias) and the pair's preference is the mean of the two. Per call the verdict is the letter the reply's
TEXT names ("B", "**B**", "Answer: A — because…", "The better answer is B."). When the server returns
log-probabilities, the preference is P(model's letter) among {A, B} read at the verdict letter's OWN token
position (never at an earlier token, whose alternatives may hold the article "A"), with the text as the check:
probabilities that favour the other letter than the text names are a judge error, as are calls that still fail
after the client's retries and replies without a verdict (refusals, "A and B are equal"). Judge errors give no
preference (never a neutral 0.5); a pair with an error in either order is left out; the caller fails the stage
when too many calls fail. Position consistency: the share of pairs whose two orders name the same answer; a pair
whose two verdicts name the same position is a tie (the verdict followed the position). The first comparison
runs alone: an endpoint that is down, unauthorised or unknown fails the stage at once with the endpoint and the
HTTP status named. The API key comes from env SYNPO_JUDGE_API_KEY (the operator maps the Secret there); it is
never logged.
"""

from __future__ import annotations

import math
import os
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
MAX_TOKENS = 16
"""Room for a short sentence around the letter ("The better answer is B."); the verdict is read from the text."""
POSITION_BIAS_THRESHOLD = 0.1
"""A judge whose verdicts name position A in more than 0.5 + this share of its calls (or fewer than 0.5 − it) is
flagged as position-biased: with both orders asked, an unbiased judge names A in exactly half."""

_ONLY = re.compile(r"^\W*([AB])\W*$")
_NAMED = re.compile(r"(?i:answer|output|verdict|choice|option|response)\W{0,3}(?i:is\W{0,3})?\(?([AB])\b")
_LETTER = re.compile(r"(?<![\w'])([AB])(?![\w'])")


class JudgeError(UserError):
    """The judge cannot do its job (endpoint down, unauthorised, or too many failed comparisons)."""


def find_verdict(text: str) -> tuple[str, int] | None:
    """(letter, its character offset in text) or None. Letters are matched case-sensitively (the article "a" is
    no verdict): a reply that is just the letter; else a letter named as the answer ("Answer: B", "the better
    answer is A"); else the one capital letter A or B standing alone. A reply naming both, or neither, has no
    verdict. The offset is the letter's first occurrence as the verdict."""
    if m := _ONLY.match(text):
        return m.group(1), m.start(1)
    named = list(_NAMED.finditer(text))
    if named:
        letters = {m.group(1) for m in named}
        return (named[0].group(1), named[0].start(1)) if len(letters) == 1 else None
    standing = list(_LETTER.finditer(text))
    if standing and len({m.group(1) for m in standing}) == 1:
        return standing[0].group(1), standing[0].start(1)
    return None


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or None (find_verdict without the offset)."""
    found = find_verdict(text)
    return found[0] if found else None


def letter_probabilities(alternatives: list[tuple[str, float]]) -> dict[str, float] | None:
    """P(A), P(B) normalised over the two, from ONE position's (token, logprob) alternatives; None when none of
    them is a verdict letter."""
    mass = {"A": 0.0, "B": 0.0}
    for token, logprob in alternatives:
        letter = token.strip().strip("*().:")
        if letter in mass:
            mass[letter] += math.exp(logprob)
    total = mass["A"] + mass["B"]
    return {k: v / total for k, v in mass.items()} if total > 0 else None


def verdict_position(tokens: list[str], letter: str) -> int | None:
    """Index of the generated token that holds the verdict letter: the verdict is found again in the text the
    tokens spell (it must name the same letter), and the token whose span covers its offset is the one."""
    found = find_verdict("".join(tokens))
    if found is None or found[0] != letter:
        return None
    offset = found[1]
    end = 0
    for i, token in enumerate(tokens):
        end += len(token)
        if offset < end:
            return i
    return None


@dataclass(frozen=True)
class Position:
    token: str
    logprob: float
    alternatives: list[tuple[str, float]]


@dataclass(frozen=True)
class Call:
    """One judge call, read: outcome ok | weighted | error | unparsed | disagreed."""
    outcome: str
    preference: float | None = None
    """P(the model's answer is better), or None for a judge error."""
    named_first: bool | None = None
    """The verdict named position A."""
    message: str | None = None


def read_reply(text: str, positions: list[Position] | None, model_is: str) -> Call:
    """A reply's verdict for the model, whose answer was shown as `model_is`. Pure."""
    found = find_verdict(text.strip())
    if found is None:
        return Call("unparsed", message=f"no verdict in reply {text[:80]!r}")
    letter = found[0]
    hard = 1.0 if letter == model_is else 0.0
    if not positions:
        return Call("ok", hard, letter == "A")
    at = verdict_position([p.token for p in positions], letter)
    probs = None
    if at is not None:
        probs = letter_probabilities(positions[at].alternatives or [(positions[at].token, positions[at].logprob)])
    if probs is None:  # the tokens do not spell the verdict, or offer no letter there: the text alone
        return Call("ok", hard, letter == "A")
    if probs[letter] < 0.5:
        return Call("disagreed", message=f"reply {text[:60]!r} names {letter} but its log-probabilities give "
                                         f"P({letter}) = {probs[letter]:.2f}")
    return Call("weighted", probs[model_is], letter == "A")


@dataclass
class Verdicts:
    preferences: list[float | None]
    """Per pair: the model's preference averaged over both orders, or None when either order failed."""
    calls: int = 0
    """Judge calls: two per pair."""
    errors: int = 0
    """Calls that failed after retries."""
    unparsed: int = 0
    """Replies without a verdict."""
    disagreed: int = 0
    """Replies whose text and log-probabilities name different letters."""
    weighted: int = 0
    """Preferences read from log-probabilities."""
    named_first: int = 0
    """Verdicts naming position A."""
    pairs_judged: int = 0
    """Pairs with a verdict in both orders."""
    ties: int = 0
    """Pairs whose two verdicts named the same position (so neither answer)."""
    messages: list[str] = field(default_factory=list)
    """A few error messages, for the stage log."""

    @property
    def failed(self) -> int:
        return self.errors + self.unparsed + self.disagreed

    def position_figures(self) -> dict:
        """positionConsistency, ties, firstPositionRate and positionBiased (camelCase), over the pairs judged
        in both orders; empty when none was."""
        if not self.pairs_judged:
            return {}
        first = self.named_first / (2 * self.pairs_judged)
        return {"positionConsistency": round(1 - self.ties / self.pairs_judged, 6), "ties": self.ties,
                "firstPositionRate": round(first, 6),
                "positionBiased": abs(first - 0.5) > POSITION_BIAS_THRESHOLD}


def combine(pairs: list[tuple[Call, Call]]) -> Verdicts:
    """Verdicts from each pair's two calls (model's answer as A, then as B). Pure."""
    out = Verdicts([])
    for calls in pairs:
        for c in calls:
            out.calls += 1
            out.errors += c.outcome == "error"
            out.unparsed += c.outcome == "unparsed"
            out.disagreed += c.outcome == "disagreed"
            out.weighted += c.outcome == "weighted"
            if c.message and len(out.messages) < 5:
                out.messages.append(c.message)
        if any(c.preference is None for c in calls):
            out.preferences.append(None)
            continue
        out.preferences.append(sum(c.preference for c in calls) / len(calls))
        out.pairs_judged += 1
        out.named_first += sum(bool(c.named_first) for c in calls)
        out.ties += calls[0].named_first == calls[1].named_first
    return out


def _status(e: Exception) -> str:
    code = getattr(e, "status_code", None)
    return f"HTTP {code}" if code else type(e).__name__


class OpenAIJudge:
    def __init__(self, endpoint: str, model: str, *, timeout: float = 120.0, retries: int = 3, workers: int = 8,
                 logprobs: bool = True):
        from openai import OpenAI

        self.endpoint = endpoint
        self.model = model
        self.workers = workers
        self.logprobs = logprobs
        # The key may be absent (a local vLLM server); the client insists on a string.
        self.client = OpenAI(base_url=endpoint, api_key=os.environ.get(API_KEY_ENV) or "none", timeout=timeout,
                             max_retries=retries)

    def _ask(self, content: str) -> tuple[str, list[Position] | None]:
        kwargs = {"logprobs": True, "top_logprobs": 5} if self.logprobs else {}
        reply = self.client.chat.completions.create(
            model=self.model, temperature=0, max_tokens=MAX_TOKENS,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}], **kwargs)
        choice = reply.choices[0]
        positions = None
        if self.logprobs and choice.logprobs and choice.logprobs.content:
            positions = [Position(p.token, p.logprob, [(t.token, t.logprob) for t in (p.top_logprobs or [])])
                         for p in choice.logprobs.content]
        return str(choice.message.content or ""), positions

    def _one(self, prompt: str, model_out: str, other_out: str, model_first: bool) -> Call:
        """One call, the model's answer shown as A when model_first. Fatal errors raise."""
        import openai

        a, b = (model_out, other_out) if model_first else (other_out, model_out)
        try:
            text, positions = self._ask(TEMPLATE.format(instruction=prompt, a=a, b=b))
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise JudgeError(f"openai judge at {self.endpoint} (model {self.model}): {_status(e)}: "
                             f"{_message(e)}") from e
        except openai.OpenAIError as e:
            return Call("error", message=f"{_status(e)}: {_message(e)}")
        return read_reply(text, positions, "A" if model_first else "B")

    def prefer(self, prompts: list[str], model_outputs: list[str], other_outputs: list[str]) -> Verdicts:
        n = len(prompts)
        if n == 0:
            return Verdicts([])
        first = self._first(prompts[0], model_outputs[0], other_outputs[0])
        jobs = [(i, order) for i in range(n) for order in (True, False)][1:]
        with ThreadPoolExecutor(self.workers) as pool:
            rest = list(pool.map(lambda job: self._one(prompts[job[0]], model_outputs[job[0]],
                                                       other_outputs[job[0]], job[1]), jobs))
        calls = [first, *rest]
        return combine([(calls[2 * i], calls[2 * i + 1]) for i in range(n)])

    def _first(self, prompt: str, model_out: str, other_out: str) -> Call:
        """The first comparison, alone: a dead endpoint fails here, before n calls time out one by one."""
        call = self._one(prompt, model_out, other_out, True)
        if call.outcome == "error" and self.logprobs and str(call.message).startswith(("HTTP 400", "HTTP 422")):
            # Some servers reject logprobs; ask again without them before giving up.
            self.logprobs = False
            call = self._one(prompt, model_out, other_out, True)
        if call.outcome == "error":
            raise JudgeError(f"openai judge at {self.endpoint} (model {self.model}) failed its first comparison: "
                             f"{call.message}")
        return call


def _message(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        msg = inner.get("message") if isinstance(inner, dict) else None
        if msg:
            return str(msg)[:300]
    return str(e)[:300]
