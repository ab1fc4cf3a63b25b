"""Batched decoding with a preallocated KV cache and one replayable decode step (Llama-architecture models).

Why: for a small model, transformers' `generate()` spends most of each decoding step outside the model:
logits processors and stopping criteria in Python, a host sync per step (is every row done?), hundreds of
kernel launches. At 135M parameters a GPU needs about 0.1 ms of arithmetic per step at batch 256 (issue
#7), so the loop sets the speed. This decoder:

- preallocates the KV cache for batch × (prompt + new tokens) once. Cache slot = step index, the same for
  every row; a left-padded row skips its pad slots through the attention mask, and its RoPE positions start
  at its first real token, so every row sees exactly what it would see alone;
- runs one decoding step (one-token forward, temperature, top-k/top-p, sampling, EOS bookkeeping) with
  static shapes and no host sync: the slot index lives in a device tensor, sampling is an exponential race
  over the top-k candidates (`sampling.sample_top_k_top_p`), finished rows are tracked on the device;
- on CUDA captures that step once in a CUDA graph and replays it: one launch per token instead of hundreds;
- asks the host whether every row is done (EOS, stop string) every `sync_every` steps only.

The model's own modules do the math (embeddings, norms, projections, MLP, rotary embedding): greedy
decoding gives generate()'s tokens (tests/workloads/test_engine_speed.py). Supported: Llama-architecture
models (`model_type` llama, e.g. SmolLM2, and qwen2); `supports(model)` says whether a model is one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("synpo.decode")

SUPPORTED = ("llama", "qwen2")


def supports(model) -> bool:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return (getattr(model.config, "model_type", None) in SUPPORTED and layers is not None
            and hasattr(inner, "rotary_emb") and hasattr(model, "lm_head")
            and not getattr(model.config, "use_sliding_window", False)
            and all(hasattr(layer.self_attn, "q_proj") for layer in layers))


class StaticDecoder:
    """Decodes batches of up to `batch` left-padded prompts of up to `max_len - max_new` tokens."""

    def __init__(self, model, batch: int, max_len: int, *, graphs: bool | None = None):
        import torch

        param = next(model.parameters())
        self.model, self.inner = model, model.model
        self.device, self.dtype = param.device, param.dtype
        self.batch, self.max_len = batch, max_len
        attn = self.inner.layers[0].self_attn
        kv_heads = model.config.num_key_value_heads
        shape = (batch, kv_heads, max_len, attn.head_dim)
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.inner.layers]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.inner.layers]
        self.slots = torch.arange(max_len, device=self.device)
        # the decode step's state: it reads and advances these in place (replayable)
        self.tokens = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.slot = torch.zeros((), dtype=torch.long, device=self.device)
        self.pads = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        self.out = torch.zeros(batch, max_len, dtype=torch.long, device=self.device)
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        self.prefill_rows = 64
        self._graph = None
        self._sample: Callable | None = None
        self._eos = None
        self._pad_id = 0

    # ---- the model, on the cache
    def _forward(self, hidden, positions, write_slots, mask, rows: slice = slice(None)):
        """hidden [B, T, H] of cache rows `rows`, at cache slots `write_slots` [T], RoPE `positions` [B, T];
        mask [B, 1, T, S] (True: may attend)."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        cos, sin = self.inner.rotary_emb(hidden, positions)
        b, t, _ = hidden.shape
        for i, layer in enumerate(self.inner.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            keys, values = self.keys[i][rows], self.values[i][rows]
            keys.index_copy_(2, write_slots, k)
            values.index_copy_(2, write_slots, v)
            o = _attend(q, keys, values, mask, attn.scaling)
            hidden = hidden + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.inner.norm(hidden)

    def _prefill(self, ids, pads):
        """Run the prompts (left-padded to P tokens) into slots [0, P), `prefill_rows` rows at a time (the
        attention scores of a whole batch of 1024 long prompts would not fit); the last position's logits."""
        import torch

        p = ids.shape[1]
        slots = self.slots[:p]
        query, keys = slots[None, :, None], self.slots[None, None, :]
        logits = []
        for start in range(0, ids.shape[0], self.prefill_rows):
            rows = slice(start, start + self.prefill_rows)
            row_pads = pads[rows]
            positions = (slots[None, :] - row_pads[:, None]).clamp(min=0)
            # a real token sees the real tokens up to itself; a pad slot sees only itself (a row with nothing
            # to attend to would give NaN, and NaN in a masked value slot still poisons the weighted sum)
            mask = (keys <= query) & ((keys >= row_pads[:, None, None]) | (keys == query))
            hidden = self._forward(self.inner.embed_tokens(ids[rows]), positions, slots, mask[:, None], rows)
            logits.append(self.model.lm_head(hidden[:, -1]).float())
        return torch.cat(logits)

    def _step(self) -> None:
        """One token for every row: reads tokens at `slot`, writes the next ones at slot + 1. No host sync."""
        import torch

        positions = (self.slot - self.pads).clamp(min=0)[:, None]
        mask = ((self.slots <= self.slot) & (self.slots >= self.pads[:, None]))[:, None, None, :]
        hidden = self._forward(self.inner.embed_tokens(self.tokens[:, None]), positions, self.slot.view(1), mask)
        logits = self.model.lm_head(hidden[:, 0]).float()
        nxt = torch.where(self.done, self._pad_id, self._sample(logits))
        self.done |= torch.isin(nxt, self._eos)
        self.slot += 1
        self.out.index_copy_(1, self.slot.view(1), nxt[:, None])
        self.tokens.copy_(nxt)

    def _capture(self) -> None:
        import torch

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        saved = [t.clone() for t in (self.tokens, self.slot, self.done, self.out)]
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the capture (lazy inits, allocator)
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        for dst, src in zip((self.tokens, self.slot, self.done, self.out), saved, strict=True):
            dst.copy_(src)
        self._graph = graph

    # ---- one batch
    def generate(self, rows: list[list[int]], *, max_new: int, sample: Callable, eos: list[int], pad_id: int,
                 sync_every: int = 16, stopped: Callable[[int, list[int]], int | None] | None = None
                 ) -> list[list[int]]:
        """New tokens of each row (a finished row ends at its EOS, included, then pad ids). `sample(logits) ->
        tokens` must not sync with the host; `stopped(row, tokens)` (host, every `sync_every` steps) ends a
        row early (stop strings): it returns how many of the tokens to keep, or None."""
        import torch

        n = len(rows)
        longest = max(len(r) for r in rows)
        if n > self.batch or longest + max_new > self.max_len:
            raise ValueError(f"{n} prompts of up to {longest} tokens + {max_new} do not fit "
                             f"batch {self.batch} x {self.max_len} slots")
        ids = torch.full((self.batch, longest), pad_id, dtype=torch.long)
        pads = torch.full((self.batch,), longest - 1, dtype=torch.long)  # unused rows: one pad token
        for i, row in enumerate(rows):
            ids[i, longest - len(row):] = torch.tensor(row, dtype=torch.long)
            pads[i] = longest - len(row)
        ids, pads = ids.to(self.device), pads.to(self.device)
        if self._sample is not sample or self._pad_id != pad_id or self._eos is None or \
                self._eos.tolist() != list(eos):
            # a captured step holds the sampler, the pad id and the EOS tensor's memory: new ones, new capture
            self._graph = None
            self._sample, self._pad_id = sample, pad_id
            self._eos = torch.tensor(list(eos), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            self.pads.copy_(pads)
            self.done.zero_()
            self.done[n:] = True
            self.out.fill_(pad_id)
            first = torch.where(self.done, pad_id, sample(self._prefill(ids, pads)))
            self.done |= torch.isin(first, self._eos)
            self.slot.fill_(longest)
            self.out[:, longest] = first
            self.tokens.copy_(first)
            replay = self._step
            if self.graphs:
                if self._graph is None:
                    try:
                        self._capture()
                    except Exception as err:  # noqa: BLE001 - eager steps are slower, never wrong
                        log.warning("CUDA graph capture failed, decoding without it: %s", err)
                        self.graphs = False
                if self._graph is not None:
                    replay = self._graph.replay
            steps = 1
            while steps < max_new:
                replay()
                steps += 1
                if steps % sync_every == 0 or steps == max_new:
                    if stopped is not None:
                        self._stop_rows(n, longest, steps, stopped)
                    if bool(self.done[:n].all()):
                        break
            new = self.out[:n, longest:longest + steps].tolist()
        return new

    def _stop_rows(self, n: int, start: int, steps: int, stopped: Callable[[int, list[int]], int | None]) -> None:
        done = self.done[:n].tolist()
        rows = self.out[:n, start:start + steps].tolist()
        for i in range(n):
            keep = None if done[i] else stopped(i, rows[i])
            if keep is not None:  # the tokens after the stop string were decoded for nothing: drop them
                self.done[i] = True
                self.out[i, start + keep:] = self._pad_id


def _attend(q, keys, values, mask, scale: float):
    """Attention of q [B, heads, T, D] over the cache [B, kv_heads, S, D] (grouped-query: query head h reads
    kv head h // (heads / kv_heads), as transformers' repeat_kv). One decoding token: two matmuls on the
    cache as it is, never a copy expanded to every query head (the cache is what a large batch reads per
    step). Several tokens (prefill): scaled_dot_product_attention."""
    import torch
    import torch.nn.functional as F

    b, heads, t, d = q.shape
    kv = keys.shape[1]
    if t > 1:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)
    grouped = q.view(b, kv, heads // kv, d)
    scores = torch.matmul(grouped, keys.transpose(-1, -2)).float() * scale  # [B, kv, group, S]
    scores = scores.masked_fill(~mask, float("-inf"))  # mask [B, 1, 1, S]
    out = torch.matmul(scores.softmax(dim=-1).to(values.dtype), values)  # [B, kv, group, D]
    return out.view(b, heads, 1, d)
