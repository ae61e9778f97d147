"""The planner's activation model against what autograd really keeps (saved-tensor hooks), for
every family, several shapes, fp32 and bf16 autocast, and every checkpoint mode: within 10%."""

import pytest
import torch
from memory_helpers import EXPERIMENTS, TEXT_LEN, model_config, model_inputs, one_thread, tiny_model  # noqa: F401

from litegen.models.activations import Precision, activation_model, unit_counts
from litegen.parallel.memory import MemorySettings
from litegen.parallel.saved_bytes import SavedBytes

MODES = {None: None, "recompute_all": MemorySettings("full"),
         "save_matmuls": MemorySettings("selective", 1.0, "save_matmuls"),
         "save_attention": MemorySettings("selective", 1.0, "save_attention")}
# (latent T, H, W, batch, precision, modes): several shapes; bf16 on fewer combinations (time).
CASES = [((4, 16, 16), 2, "fp32", list(MODES)), ((8, 8, 16), 1, "fp32", list(MODES)),
         ((4, 8, 32), 2, "bf16", [None, "save_matmuls"]), ((8, 8, 16), 1, "bf16", ["recompute_all"])]
TOLERANCE = 0.10


def measure(cfg, policy, thw, batch, bf16: bool) -> SavedBytes:
    net, plan, _ = tiny_model(cfg, MODES[policy])
    with SavedBytes(net, plan) as counted, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        net(*model_inputs(cfg, thw, batch))
    return counted


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_predicted_bytes_within_10_percent_of_counted(experiment):
    cfg = model_config(experiment)
    worst = 0.0
    for thw, batch, precision, policies in CASES:
        bf16 = precision == "bf16"
        model = activation_model(cfg, Precision(2 if bf16 else 4, weight_copies=bf16))
        counts = unit_counts(cfg, (cfg.in_channels, *thw), TEXT_LEN, batch)
        for policy in policies:
            counted = measure(cfg, policy, thw, batch, bf16)
            predicted_block = model.block.kept(policy).bytes(counts)
            layers = len(counted.blocks)
            predicted_total = predicted_block * layers + model.outside.bytes(counts)
            where = f"{experiment} {precision} {policy} latent {thw} x{batch}"
            for i, block in enumerate(counted.blocks):
                assert abs(predicted_block - block) <= TOLERANCE * block, (where, f"block {i}", predicted_block, block)
                worst = max(worst, abs(predicted_block - block) / block)
            assert abs(predicted_total - counted.total) <= TOLERANCE * counted.total, (where, predicted_total,
                                                                                       counted.total)
    assert worst < TOLERANCE


def test_checkpointing_keeps_less_in_the_expected_order():
    """none > save_matmuls > save_attention > full (per block), and full keeps only the input."""
    cfg = model_config("tiny")
    block = activation_model(cfg, Precision(2)).block
    counts = unit_counts(cfg, (cfg.in_channels, 21, 60, 104), 512, 1)
    kept = [block.kept(p).bytes(counts) for p in (None, "save_matmuls", "save_attention", "recompute_all")]
    assert kept == sorted(kept, reverse=True) and len(set(kept)) == 4
    assert kept[-1] == counts.token * cfg.dim * 2  # one bf16 d-wide input per token


def test_sequence_parallel_divides_tokens_not_text():
    cfg = model_config("tiny")
    one, four = (unit_counts(cfg, (12, 8, 32, 32), 7, 2, sp) for sp in (1, 4))
    assert four.token == one.token / 4 and four.position == one.position / 4
    assert four.text == one.text and four.sample == one.sample
    assert unit_counts(cfg, (12, 3, 6, 10), 7, 1, 2).token == 23  # 45 tokens pad to 46
