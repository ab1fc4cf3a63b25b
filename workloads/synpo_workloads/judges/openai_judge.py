"""Pairwise LLM judge over an OpenAI-compatible `/chat/completions` endpoint (urllib; no SDK needed).

For each prompt the judge sees both outputs in a random (seeded) order, to cancel position bias, and answers
"A" or "B". Preference for the model: 1, 0, or 0.5 when the answer cannot be parsed or the call fails after
retries (counted in `errors`). The API key comes from env SYNPO_JUDGE_API_KEY (the operator maps the
Secret there); it is never logged.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

API_KEY_ENV = "SYNPO_JUDGE_API_KEY"

SYSTEM = "You are a careful, impartial judge of AI assistant answers."
TEMPLATE = (
    "Which answer better follows the user's instruction: helpful, correct, relevant, and clear? "
    "Ignore length unless it matters for quality.\n\n"
    "### Instruction:\n{instruction}\n\n### Answer A:\n{a}\n\n### Answer B:\n{b}\n\n"
    "Reply with a single letter: A or B."
)


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or None from the judge's reply (first standalone letter A/B)."""
    import re

    m = re.search(r"\b([AB])\b", text.strip().upper())
    return m.group(1) if m else None


class OpenAIJudge:
    def __init__(self, endpoint: str, model: str, *, seed: int = 0, timeout: float = 120.0, retries: int = 3,
                 workers: int = 8):
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model = model
        self.seed = seed
        self.timeout = timeout
        self.retries = retries
        self.workers = workers
        self.errors = 0

    def _ask(self, content: str) -> str:
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 4,
                           "messages": [{"role": "system", "content": SYSTEM},
                                        {"role": "user", "content": content}]}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(API_KEY_ENV)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        delay = 1.0
        for attempt in range(self.retries):
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    doc = json.loads(resp.read())
                return str(doc["choices"][0]["message"]["content"] or "")
            except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError):
                if attempt + 1 == self.retries:
                    raise
                time.sleep(delay)
                delay *= 2
        return ""

    def _one(self, i: int, prompt: str, model_out: str, other_out: str) -> float:
        swap = random.Random(self.seed * 1_000_003 + i).random() < 0.5
        a, b = (other_out, model_out) if swap else (model_out, other_out)
        try:
            verdict = parse_verdict(self._ask(TEMPLATE.format(instruction=prompt, a=a, b=b)))
        except Exception:
            self.errors += 1
            return 0.5
        if verdict is None:
            self.errors += 1
            return 0.5
        model_is = "B" if swap else "A"
        return 1.0 if verdict == model_is else 0.0

    def prefer(self, prompts: list[str], model_outputs: list[str], other_outputs: list[str]) -> list[float]:
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self._one, range(len(prompts)), prompts, model_outputs, other_outputs))
