"""Every experiment composes, every config group instantiates, and mistakes name their field."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from litegen.config import CONFIG_DIR, ConfigError, compose
from conftest import REPO
from litegen.encoders import build_text_encoder, build_video_encoder
from litegen.models import build_model, count_params
from litegen.objectives import build_objective
from litegen.train.setup import build_optimizer

# Groups whose options need files on disk (a local model folder) get a dummy path to validate.
NEEDS_PATH = {("encoders/video", "diffusers_vae"): ["encoders.video.path=/models/vae"],
              ("encoders/text", "t5"): ["encoders.text.path=/models/t5"]}
# Token models and the masked-token objective only go together.
PARTNER = {("model", "worlddreamer_tiny"): ["objective=masked_tokens"],
           ("objective", "masked_tokens"): ["model=worlddreamer_tiny"]}
# Full-size WorldDreamer needs a real 8192-code VQ tokenizer; the built-in palette tokenizer has
# levels^3 codes, so composing it must fail on model.vocab_size (its size is checked on meta in
# tests/unit/test_families.py from the model yaml alone).
NEEDS_REAL_TOKENIZER = {"worlddreamer"}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_experiment_composes():
    experiments = _options("experiment")
    assert "tiny" in experiments
    for name in experiments:
        cfg = compose([f"experiment={name}"])
        assert cfg.run_name


@pytest.mark.parametrize("group", ["model", "objective", "optim", "train", "data", "parallel",
                                   "logging", "encoders/video", "encoders/text"])
def test_every_group_option_composes(group):
    for option in _options(group):
        overrides = [f"{group}={option}", *NEEDS_PATH.get((group, option), []),
                     *PARTNER.get((group, option), [])]
        if group == "model" and option in NEEDS_REAL_TOKENIZER:
            with pytest.raises(ConfigError, match="model.vocab_size"):
                compose(overrides + ["objective=masked_tokens"])
            continue
        if group == "model" and option != "tiny":
            # Full-size models expect real encoders (16 latent channels, 4096-wide text).
            overrides += ["encoders/video=diffusers_vae", "encoders.video.path=/m",
                          "encoders/text=t5", "encoders.text.path=/m"]
        if group == "encoders/text" and option == "t5":
            overrides += ["model.text_dim=64"]
        compose(overrides)


def test_every_model_instantiates_on_meta():
    for option in set(_options("model")) - NEEDS_REAL_TOKENIZER:
        overrides = [f"model={option}", *PARTNER.get(("model", option), [])]
        if option != "tiny":
            overrides += ["encoders/video=diffusers_vae", "encoders.video.path=/m",
                          "encoders/text=t5", "encoders.text.path=/m"]
        cfg = compose(overrides)
        with torch.device("meta"):
            net = build_model(cfg.model)
        assert count_params(net) > 0


def test_default_stack_instantiates():
    cfg = compose([])
    with torch.device("meta"):
        net = build_model(cfg.model)
    net.to_empty(device="cpu")
    net.init_weights(0)
    build_optimizer(net, cfg)
    build_objective(cfg.objective)
    video, text = build_video_encoder(cfg.encoders.video), build_text_encoder(cfg.encoders.text)
    assert video.latent_channels == cfg.model.in_channels and text.dim == cfg.model.text_dim


@pytest.mark.parametrize("overrides, field", [
    (["train.steps=0"], "train.steps"),
    (["optim.lr=-1"], "optim.lr"),
    (["encoders.video.spatial_factor=4"], "model.in_channels"),
    (["model.num_heads=3"], "model.num_heads"),
    (["train.sample.height=33"], "train.sample"),
    (["parallel.backend=nope"], "parallel.backend"),
])
def test_bad_values_name_their_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    assert field in str(err.value)


def _cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "litegen.train", *overrides,
                           f"hydra.run.dir={cwd / 'run'}"], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_cli_bad_key_and_bad_value_fail_clearly(tmp_path):
    bad_key = _cli("train.stepz=3", cwd=tmp_path)
    assert bad_key.returncode != 0
    assert "train.stepz" in bad_key.stderr and "Traceback" not in bad_key.stderr
    bad_type = _cli("train.steps=many", cwd=tmp_path)
    assert bad_type.returncode != 0 and "train.steps" in bad_type.stderr
    bad_value = _cli("train.steps=-5", cwd=tmp_path)
    assert bad_value.returncode == 2
    assert "train.steps: must be > 0, got -5" in bad_value.stderr
    assert "Traceback" not in bad_value.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before any work
