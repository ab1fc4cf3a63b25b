"""Pure text logic of SynPO: keyword extraction, tag parsing, near-duplicate detection, repetition measure.

No I/O, no randomness except through an explicit `random.Random`, so all of it is unit-tested directly.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence

STOP_WORDS = frozenset("""
a about above after again against all also am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each
either else even ever every few for from further get gets got had hadn't has hasn't have haven't having he
he'd he'll he's her here here's hers herself him himself his how how's however i i'd i'll i'm i've if in into
is isn't it it's its itself just let's like made make makes many may me might more most much must mustn't my
myself need neither never no nor not now of off often on once one only or other others ought our ours
ourselves out over own per perhaps quite rather really same say says shall shan't she she'd she'll she's
should shouldn't since so some such than that that's the their theirs them themselves then there there's
these they they'd they'll they're they've this those though through thus to too toward towards two under
until up upon us use used uses using usually very via was wasn't we we'd we'll we're we've well were weren't
what what's whatever when when's where where's whether which while who who's whom whose why why's will with
within without won't would wouldn't yet you you'd you'll you're you've your yours yourself yourselves
first second also around across among along already always another anyone anything became become becomes
called come comes different does done due each else enough etc example far found give given gives go goes
going good great high keep kept known large last least less long low may mean means mostly new next often
old part people place put rather several show shown side simply small something sometimes still take takes
taken three thing things think time times today together took tell way ways whole yes year years
""".split())
"""Common English function words and vague fillers; never chosen as keywords."""

_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]")
_SENTENCE_END = re.compile(r"[.!?:;]\s*$|^\s*$")


def keyword_candidates(paragraph: str, min_len: int = 3) -> list[str]:
    """Distinct lowercase content words of a paragraph, in order of first use.

    Dropped: stop words, words shorter than min_len, and likely personal names. The name heuristic (no
    name list is available offline): a word that only ever appears capitalised — never lowercase — in the
    paragraph is treated as a proper noun and dropped, wherever it stands. This removes personal names and
    also places and brands, which is the safe side for "no personal names". A sentence-initial capitalised
    word is kept only when the paragraph also uses it in lowercase.
    """
    tokens = [(m.group(0), m.start()) for m in _WORD.finditer(paragraph)]
    lower_seen = {w for w, _ in tokens if w[0].islower()}
    out: dict[str, None] = {}
    for word, _ in tokens:
        low = word.lower()
        if len(low) < min_len or low in STOP_WORDS or low.strip("'-") in STOP_WORDS:
            continue
        if word[0].isupper() and low not in lower_seen:
            continue  # only ever capitalised: a proper noun (names included)
        if word.isupper() and len(word) > 1:
            continue  # acronyms
        out.setdefault(low, None)
    return list(out)


def keyword_stream(paragraph_candidates: Sequence[Sequence[str]], start: int, count: int, k: int,
                   seed: int) -> list[tuple[int, list[str]]]:
    """Positions start..start+count-1 of one endless, seeded stream of keyword lists: (paragraph index, k
    keywords). Iteration t takes positions (t-1)·m .. t·m-1, so lists never depend on how many iterations the run
    has (it may be raised later) and iterations draw distinct paragraphs while the corpus lasts (paragraphs are
    shuffled without replacement, then the corpus is reshuffled). Empty when no paragraph has k candidates."""
    usable = [i for i, c in enumerate(paragraph_candidates) if len(c) >= k]
    if not usable:
        return []
    order_rng = random.Random(f"{seed}/order")
    order: list[int] = []
    while len(order) < start + count:
        batch = usable[:]
        order_rng.shuffle(batch)
        order.extend(batch)
    return [(i, random.Random(f"{seed}/{pos}").sample(list(paragraph_candidates[i]), k))
            for pos, i in zip(range(start, start + count), order[start:start + count], strict=True)]


def generator_keywords(seed_candidates: Sequence[Sequence[str]], i: int, k: int, noise: int,
                       rng: random.Random) -> list[str] | None:
    """Keywords for training example i: k − noise from seed prompt i plus `noise` from another seed j ≠ i,
    shuffled (so the noise keyword has no fixed position). None when prompt i has no keyword at all."""
    own = list(seed_candidates[i])
    if not own:
        return None
    chosen = rng.sample(own, min(len(own), k - noise))
    others = [j for j in range(len(seed_candidates)) if j != i and seed_candidates[j]]
    picked = 0
    for _ in range(noise * 20):  # a few tries to find a noise word not already chosen
        if picked >= noise or not others:
            break
        word = rng.choice(list(seed_candidates[rng.choice(others)]))
        if word not in chosen:
            chosen.append(word)
            picked += 1
    rng.shuffle(chosen)
    return chosen


# ------------------------------------------------------------------------------------------- tags
_QUESTION = re.compile(r"<question>(.*?)(?:</question>|$)", re.S)
_SOLUTION = re.compile(r"<solution>(.*?)(?:</solution>|$)", re.S)


def parse_tagged(text: str, require_closed: bool = True) -> tuple[str, str | None] | None:
    """(question, solution or None) from generator output, or None when malformed.

    Malformed: no `<question>` tag, an unclosed one (when require_closed), or an empty question. The solution
    is optional: the prompts stage stops generating at `</question>`, since only the question is kept.
    """
    start = text.find("<question>")
    if start < 0:
        return None
    m = _QUESTION.search(text, start)
    if m is None or (require_closed and "</question>" not in text[start:]):
        return None
    question = m.group(1).strip()
    if not question or "<question>" in question or "<solution>" in question:
        return None
    s = _SOLUTION.search(text, m.end())
    return question, (s.group(1).strip() if s else None)


def format_tagged(question: str, solution: str) -> str:
    return f"<question>{question}</question>\n<solution>{solution}</solution>"


# ------------------------------------------------------------------------------------------- near duplicates
_NORM_TOKEN = re.compile(r"[a-z0-9]+")


def normalise_tokens(text: str) -> list[str]:
    return _NORM_TOKEN.findall(text.lower())


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def dedupe(texts: Sequence[str], threshold: float = 0.8) -> list[int]:
    """Indices of texts kept, first occurrence wins. A text is a near duplicate of an earlier one when their
    normalised token sets (lowercase alphanumeric words) have Jaccard similarity ≥ threshold; identical
    after normalisation is the case J = 1. Texts with no tokens are dropped.

    Exact and sub-quadratic: the prefix filter of set-similarity joins — with tokens ordered rarest first,
    two sets with J ≥ t must share a token among the first |s| − ⌈t·|s|⌉ + 1 of each.
    """
    sets = [frozenset(normalise_tokens(t)) for t in texts]
    freq = Counter(tok for s in sets for tok in s)
    index: dict[str, list[int]] = {}
    kept: list[int] = []
    for i, s in enumerate(sets):
        if not s:
            continue
        ordered = sorted(s, key=lambda tok: (freq[tok], tok))
        prefix = ordered[: len(s) - math.ceil(threshold * len(s) - 1e-9) + 1]
        candidates = {j for tok in prefix for j in index.get(tok, ())}
        if any(jaccard(s, sets[j]) >= threshold for j in candidates):
            continue
        kept.append(i)
        for tok in prefix:
            index.setdefault(tok, []).append(i)
    return kept


# ------------------------------------------------------------------------------------------- repetition
def repetition_ratio(text: str, n: int = 3) -> float:
    """Share of the text's word n-grams that repeat an earlier n-gram: 1 − distinct/total.

    0 for text without repetition (or shorter than n words); approaches 1 for degenerate loops. The paper
    drops responses with more than 50% "repetition patterns"; this is that measure with n configurable.
    """
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)
