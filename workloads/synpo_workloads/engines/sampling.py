"""Fused top-k + nucleus (top-p) filter for `model.generate` that never sorts the whole vocabulary.

transformers' own warpers run TopK(k) and then TopP(p); TopP sorts every row of the full vocabulary
(49k entries for SmolLM2/Llama-3) on every decoding step, although TopK has already masked all but k of them.
`TopKTopPLogitsProcessor` does both with one `torch.topk(scores, k)` (k candidates, already in descending
order) and the nucleus cut inside them, so its result is the same set of kept tokens as TopK(k) → TopP(p):

- with `k` = the generation config's top_k (transformers' default: 50) the result is **exact**: every token
  outside the top k is masked by TopK anyway (the cumulative sums run in descending instead of ascending
  order, so a token whose cumulative mass lands within float rounding of p may fall on the other side);
- with `k=None` (no top-k) the candidates are the top `candidates` (default 1024) logits, and a row whose
  candidate mass is below p falls back to the full sort for that row only, so it is exact as well.

Kept tokens keep their logits, all others get -inf: the sampler then draws from the same distribution
(bitwise, when the kept sets agree) and consumes the random stream exactly as the stock warpers do.
"""

from __future__ import annotations


def make_processor(top_p: float, top_k: int | None, candidates: int = 1024):
    from transformers import LogitsProcessor

    class TopKTopPLogitsProcessor(LogitsProcessor):
        def __init__(self):
            self.top_p = float(top_p)
            self.top_k = int(top_k) if top_k else None
            self.candidates = candidates

        def __call__(self, input_ids, scores):
            return filter_scores(scores, self.top_p, self.top_k, self.candidates)

    return TopKTopPLogitsProcessor()


def filter_scores(scores, top_p: float, top_k: int | None, candidates: int = 1024):
    import torch

    vocab = scores.shape[-1]
    if top_p >= 1.0 and not top_k:
        return scores
    k = min(top_k if top_k else candidates, vocab)
    values, indices = torch.topk(scores, k, dim=-1)  # sorted, descending
    if top_p >= 1.0:
        keep = torch.ones_like(values, dtype=torch.bool)
        short = None
    else:
        if top_k:  # the top k are the whole support after TopK: normalise over them
            probs = values.softmax(dim=-1)
        else:  # mass relative to the full row
            probs = (values - torch.logsumexp(scores, dim=-1, keepdim=True)).exp()
        keep = _nucleus(probs, top_p)
        short = None if top_k else (probs.sum(dim=-1) < top_p)
    out = torch.full_like(scores, -float("inf"))
    out.scatter_(-1, indices, values.masked_fill(~keep, -float("inf")))
    if short is not None and bool(short.any()):  # candidate set too small for these rows: exact full sort
        rows = short.nonzero(as_tuple=True)[0]
        out[rows] = _full_top_p(scores[rows], top_p)
    return out


def _nucleus(probs, top_p: float):
    """Which of the probabilities (each row in descending order) make the nucleus: those whose better-ranked
    tokens hold less than top_p of the mass, and always the first (min_tokens_to_keep = 1)."""
    keep = (probs.cumsum(dim=-1) - probs) < top_p
    keep[..., 0] = True
    return keep


def _full_top_p(scores, top_p: float):
    sorted_logits, sorted_indices = scores.sort(dim=-1, descending=True)
    kept = sorted_logits.masked_fill(~_nucleus(sorted_logits.softmax(dim=-1), top_p), -float("inf"))
    return scores.new_full(scores.shape, -float("inf")).scatter(-1, sorted_indices, kept)


def make_sampler(temperature: float, top_p: float, top_k: int | None, candidates: int = 1024):
    """logits [B, V] -> next tokens [B], on the device, without a host sync (a CUDA graph can hold it):
    greedy at temperature 0, else the exponential race over the top-k candidates (`sample_top_k_top_p`)."""
    if temperature <= 0:
        return lambda logits: logits.argmax(dim=-1)
    k = int(top_k) if top_k else candidates
    return lambda logits: sample_top_k_top_p(logits / temperature, top_p, k)


def sample_top_k_top_p(scores, top_p: float, k: int):
    """One token per row from softmax(scores) restricted to the top k and, within them, to the nucleus p:
    the same kept set as `filter_scores` with top_k = k. Drawn by an exponential race, argmax(p_i / E_i)
    with E_i ~ Exp(1), which picks i with probability p_i / sum(p): no sort of the vocabulary, no
    multinomial (it syncs with the host). With top-k off, k is `candidates` (1024): the nucleus is cut within
    the 1024 most likely tokens (the rest of the vocabulary is dropped even if p is not reached there)."""
    import torch

    values, indices = torch.topk(scores, min(k, scores.shape[-1]), dim=-1)  # sorted, descending
    probs = values.softmax(dim=-1)
    if top_p < 1.0:
        probs = probs * _nucleus(probs, top_p)
    choice = (probs / torch.empty_like(probs).exponential_()).argmax(dim=-1, keepdim=True)
    return indices.gather(-1, choice).squeeze(-1)
