"""Padding-free log-probabilities for preference training: the sequences of a micro-batch packed into rows.

TRL's CPOTrainer runs the chosen and rejected sequences of a micro-batch as one batch padded to the longest
of them, then computes the vocabulary logits of every position (pad and prompt included) to read the
log-probability of the completion tokens. Here instead:

- the sequences are packed first-fit-decreasing into rows no longer than that longest sequence (`pack_rows`),
  each sequence keeping its own positions (RoPE restarts) and attending only to itself (a block-diagonal
  causal mask), so the transformer runs on ~the real tokens and its attention costs no more than the
  padded batch's;
- the output layer runs only at the positions that predict a completion token: no logits for prompts and
  padding (for a 49k vocabulary that is a large share of a small model's work and memory).

The per-sequence sums (or means, SimPO) equal TRL's `get_batch_logps` up to float rounding
(tests/workloads/test_packing.py), so the loss and its gradients are the same.
"""

from __future__ import annotations

from typing import Any


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of sequences per row: first fit, longest first; every row holds at most `capacity` tokens."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] > capacity:
            raise ValueError(f"a sequence of {lengths[i]} tokens does not fit rows of {capacity}")
        row = next((r for r, left in enumerate(free) if left >= lengths[i]), None)
        if row is None:
            rows.append([])
            free.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= lengths[i]
    return rows


def packable(attention_mask) -> bool:
    """Right-padded rows (each row's tokens first, then padding): what `packed_logps` needs."""
    lengths = attention_mask.sum(dim=1, keepdim=True)
    positions = attention_mask.new_ones(attention_mask.shape).cumsum(dim=1)
    return bool(((positions <= lengths) == attention_mask.bool()).all())


def packed_logps(model, input_ids, attention_mask, labels, *, average: bool,
                 label_pad: int = -100, wrapped=None) -> tuple[Any, Any, int]:
    """Per-sequence log-probability of the labels (mean over labelled tokens when `average`, else sum), as
    TRL's `get_batch_logps` (token t+1's label scored from position t), computed on packed rows.

    `wrapped`: the model as the training processes share it (DDP, or FSDP's sharded root), when there are
    several. The packed rows then go through its own forward — DDP syncs gradients and FSDP gathers the root's
    shards (embeddings, final norm, output layer) only there, so calling the decoder and the output layer
    apart, as one process does, would skip both — with logits kept only at the columns some row scores
    (`logits_to_keep`), not at each scored position alone.

    Returns (logps [n], mean logit of the scored positions per sequence [n], tokens processed)."""
    import torch

    n, width = input_ids.shape
    device = input_ids.device
    lengths = attention_mask.sum(dim=1).tolist()
    rows = pack_rows(lengths, width)
    ids = torch.zeros((len(rows), width), dtype=input_ids.dtype, device=device)
    positions = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    owner = torch.full((len(rows), width), -1, dtype=torch.long, device=device)
    scored_at, scored_tokens, scored_owner = [], [], []
    for r, members in enumerate(rows):
        at = 0
        for s in members:
            length = lengths[s]
            ids[r, at:at + length] = input_ids[s, :length]
            positions[r, at:at + length] = torch.arange(length, device=device)
            owner[r, at:at + length] = s
            targets = labels[s, 1:length]
            keep = targets != label_pad
            scored_at.append((r * width + at + torch.arange(length - 1, device=device))[keep])
            scored_tokens.append(targets[keep])
            scored_owner.append(torch.full((int(keep.sum()),), s, dtype=torch.long, device=device))
            at += length
    same = owner[:, :, None] == owner[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    # a padding slot attends to itself only: a query with nothing to attend to gives NaN, which a masked
    # weight of 0 does not cancel in the weighted sum
    mask = (same & (owner[:, :, None] >= 0) & causal) | torch.eye(width, dtype=torch.bool, device=device)
    dtype = next(model.parameters()).dtype
    if model.config._attn_implementation != "sdpa":  # eager attention adds the mask to its scores
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
    at, tokens, who = torch.cat(scored_at), torch.cat(scored_tokens), torch.cat(scored_owner)
    if wrapped is None:
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask[:, None], position_ids=positions,
                                     use_cache=False).last_hidden_state
        logits = model.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1])[at]).float()
    else:
        columns = torch.unique(at % width)  # sorted
        kept = wrapped(input_ids=ids, attention_mask=mask[:, None], position_ids=positions, use_cache=False,
                       logits_to_keep=columns).logits
        row_of, column_of = at // width, torch.searchsorted(columns, at % width)
        logits = kept.reshape(-1, kept.shape[-1])[row_of * len(columns) + column_of].float()
    token_logps = logits.gather(1, tokens[:, None]).squeeze(1) - logits.logsumexp(dim=-1)
    sums = torch.zeros(n, dtype=token_logps.dtype, device=device).index_add(0, who, token_logps)
    counts = torch.bincount(who, minlength=n).clamp(min=1)
    mean_logit = torch.zeros(n, device=device).index_add(0, who, logits.detach().mean(dim=-1)) / counts
    return (sums / counts if average else sums), mean_logit, len(rows) * width
