"""A CPU training step's micro-batches shared by lanes (one thread per core) give the adapter one lane gives."""

from __future__ import annotations

import pytest
import torch

from duckdb_ft.ml import data, dropout, kernels, lanes, models, training
from duckdb_ft.options import TrainingOptions
from conftest import PAIRS as TRAINING_PAIRS

PAIRS = TRAINING_PAIRS + [  # two more: with 48-position micro-batches, several a step and both lanes busy
    ("Name a prime number above ten.", "Eleven."),
    ("What does SQL stand for?", "Structured Query Language."),
]


def test_micro_batches_go_to_lanes_largest_first_to_the_least_loaded():
    assert lanes.assign([5, 9, 1, 4], 2) == [[1, 2], [0, 3]]  # 9 | 5, 4 to the lighter (9 | 9), 1 on the tie to 0
    assert lanes.assign([3, 3, 3], 2) == [[0, 2], [1]]  # ties: the lowest-numbered lane, the lowest index first
    assert lanes.assign([7], 4) == [[0]]  # no empty lanes
    assert sorted(i for share in lanes.assign(list(range(1, 12)), 3) for i in share) == list(range(11))
    assert lanes.lane_count(2, 1) == 1 and lanes.lane_count(2, 5) == 2 and lanes.lane_count(0, 3) == 1


def test_micro_batch_seeds_differ_by_step_and_index_and_repeat():
    seeds = {lanes.micro_batch_seed(42, s, j) for s in range(20) for j in range(8)}
    assert len(seeds) == 160
    assert lanes.micro_batch_seed(42, 3, 1) == lanes.micro_batch_seed(42, 3, 1) != lanes.micro_batch_seed(43, 3, 1)


def test_seeded_dropout_masks_repeat_and_are_per_thread():
    drop = dropout.FastDropout(0.3)
    x = torch.ones(64, 64)
    with dropout.seeded(7):
        a = drop.mask(x)
    with dropout.seeded(7):
        b = drop.mask(x)
    with dropout.seeded(8):
        c = drop.mask(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.2 < 1 - a.float().mean().item() < 0.4


@pytest.mark.slow
def test_two_lanes_train_the_adapter_one_lane_trains(tiny_model_path, monkeypatch):
    """bf16 with dropout, several micro-batches a step: every mask comes from its micro-batch's seed and the
    gradients are added in micro-batch order, so two lanes in parallel give exactly one lane's adapter."""
    tokenizer = models.load_tokenizer(tiny_model_path)
    examples = data.tokenize_pairs(tokenizer, PAIRS, 128)
    opts = TrainingOptions(max_epochs=2, batch_size=8, lora_r=4, lora_dropout=0.2, learning_rate=0.05,
                           dtype="bfloat16")
    monkeypatch.setattr(training, "MICRO_BATCH_POSITIONS", 48)
    monkeypatch.setattr(kernels.ThreadFit, "__call__", lambda self: self.start_threads)  # whatever else runs
    shares_seen: list[int] = []
    real_map = lanes.Lanes.map

    def spy(self, fn, shares):
        shares_seen.append(len(shares))
        return real_map(self, fn, shares)

    monkeypatch.setattr(lanes.Lanes, "map", spy)
    threads = torch.get_num_threads()
    adapters = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            shares_seen.clear()
            adapters.append(training.train(models.load_for_training(tiny_model_path), examples, [], opts,
                                           tokenizer.pad_token_id).adapter)
            assert max(shares_seen) == n  # one lane, then two at once
    finally:
        torch.set_num_threads(threads)
    one, two = adapters
    for name in one:
        assert torch.equal(one[name], two[name]), name
    assert any(one[name].abs().max() > 0 for name in one if "lora_B" in name)  # it trained
