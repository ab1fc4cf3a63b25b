"""Padding-free preference training (packing.py): packed rows give TRL's log-probabilities and gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_pack_rows_places_every_sequence_once_within_capacity():
    from synpo_workloads.packing import pack_rows

    lengths = [300, 40, 120, 300, 55, 180, 10, 260]
    rows = pack_rows(lengths, 300)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 300 for row in rows)
    assert len(rows) == 5  # 300 | 300 | 260+40 | 180+120 | 55+10: first fit, longest first
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([301], 300)


def test_packable_only_for_right_padding():
    from synpo_workloads.packing import packable

    assert packable(torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]))
    assert not packable(torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))


def _batch(vocab: int, lengths: list[int], prompt: int, width: int):
    gen = torch.Generator().manual_seed(0)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=gen)
        mask[i, :n] = 1
        labels[i, prompt:n] = ids[i, prompt:n]  # the completion is scored, the prompt and padding are not
    return ids, mask, labels


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("through_forward", [False, True])  # True: as with several processes (the model's forward)
def test_packed_logps_and_gradients_equal_trls(tiny_model, attention, average, through_forward):
    from transformers import AutoModelForCausalLM
    from trl.experimental.cpo import CPOTrainer

    from synpo_workloads.packing import packed_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attention, dtype=torch.float32)
    ids, mask, labels = _batch(model.config.vocab_size, [30, 12, 25, 7, 30, 18], prompt=5, width=30)

    model.zero_grad()
    ref = CPOTrainer.get_batch_logps(model(ids, attention_mask=mask).logits, labels, average_log_prob=average)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    got, mean_logit, processed = packed_logps(model, ids, mask, labels, average=average,
                                              wrapped=model if through_forward else None)
    got.sum().backward()
    assert torch.allclose(got, ref, atol=1e-4), (got, ref)
    for g, r in zip((p.grad for p in model.parameters()), ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-3)
    assert processed == 5 * 30 < ids.numel()  # rows 30 | 30 | 25 | 18+12 | 7
    assert mean_logit.shape == (6,) and torch.isfinite(mean_logit).all()


def test_the_train_stage_trainer_gives_trls_forward_on_real_batches(tiny_model, tmp_path):
    from types import SimpleNamespace

    from synpo_workloads import training

    pairs = [{"prompt": [{"role": "user", "content": "question " + "word " * i}],
              "chosen": [{"role": "assistant", "content": "good answer " * (i + 1)}],
              "rejected": [{"role": "assistant", "content": "bad " * (3 * i + 1)}]} for i in range(6)]
    section = SimpleNamespace(loss="simpo", beta=2.0, gamma=0.5, learning_rate=1e-5, epochs=1.0, batch_size=6,
                              micro_batch_size=6, warmup_ratio=0.0, max_length=256, gradient_checkpointing=False)
    trainer, _ = training.preference_trainer(tiny_model, pairs, section, checkpoints=str(tmp_path), seed=0)
    batch = next(iter(trainer.get_train_dataloader()))
    packed = trainer.concatenated_forward(trainer.model, batch)
    stock = super(type(trainer), trainer).concatenated_forward(trainer.model, batch)
    assert torch.allclose(packed[0], stock[0], atol=1e-4) and torch.allclose(packed[1], stock[1], atol=1e-4)
    assert 0 < trainer.processed_tokens < 2 * batch["chosen_input_ids"].shape[0] * max(
        batch["chosen_input_ids"].shape[1], batch["rejected_input_ids"].shape[1])
