"""`python -m litegen.tools.sample`: every tiny family's checkpoint -> the same clip the trainer
rendered from it; model vs EMA weights; the CLI writes one MP4/GIF per prompt."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_overrides

from litegen.config import CONFIG_DIR, register_configs
from litegen.config.load import load_run_config
from litegen.data.video_io import read_video
from litegen.tools import sample as sample_tool
from litegen.train.main import run_training

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PROMPT = "a red circle moving right on a blue background"
FAMILIES = ["tiny", "cogvideox_tiny", "vchitect_tiny", "snapvideo_tiny", "worlddreamer_tiny"]


def train_in_process(overrides: list[str], run_dir) -> None:
    """One short training run inside this process (cheaper than a CLI start per family)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("litegen", overrides=overrides)
    run_training(cfg, run_dir)


@pytest.fixture(scope="module")
def family_runs(tiny_shards, tmp_path_factory):
    """Each family trained 2 steps (EMA decay 0.5, so EMA and model weights differ visibly)."""
    runs = {}
    for experiment in FAMILIES:
        run_dir = tmp_path_factory.mktemp(experiment) / "run"
        overrides = [o for o in tiny_overrides(tiny_shards, run_dir) if not o.startswith("hydra.")]
        overrides = [f"experiment={experiment}" if o == "experiment=tiny" else o for o in overrides]
        # One prompt: the trainer tiles several prompts into one clip, the tool writes one each.
        train_in_process([*overrides, "train.steps=2", "train.ckpt_every_steps=2", "train.sample.steps=2",
                          f"train.sample.prompts=[{PROMPT!r}]",
                          "data.batch_size=2", "train.ema_decay=0.5", "train.log_every_steps=1"], run_dir)
        runs[experiment] = run_dir
    return runs


@pytest.mark.parametrize("experiment", FAMILIES)
def test_sample_tool_reproduces_the_trainers_ema_clip(family_runs, experiment, tmp_path):
    run_dir = family_runs[experiment]
    assert sample_tool.main([str(run_dir), "--ema", "--out", str(tmp_path)]) == 0
    assert load_run_config(run_dir / "config.yaml").train.sample.prompts == [PROMPT]
    ours, _ = read_video(tmp_path / f"{sample_tool.file_stem(0, PROMPT)}.gif")
    trainers, _ = read_video(run_dir / "samples" / "step-0000002.gif")
    assert ours.shape == trainers.shape and (ours == trainers).all()


def test_model_and_ema_weights_load_from_the_checkpoint(family_runs):
    run_dir = family_runs["tiny"]
    checkpoint = sample_tool.resolve_checkpoint(run_dir)
    assert checkpoint.name == "step-0000002"
    cfg = load_run_config(run_dir / "config.yaml")
    model = sample_tool.build_network(cfg, torch.device("cpu"))
    ema = sample_tool.build_network(cfg, torch.device("cpu"))
    fresh = sample_tool.build_network(cfg, torch.device("cpu"))
    sample_tool.load_weights(model, checkpoint, ema=False)
    sample_tool.load_weights(ema, checkpoint, ema=True)
    for (name, m), e, f in zip(model.named_parameters(), ema.parameters(), fresh.parameters()):
        # EMA with decay 0.5 over 2 steps sits between the init and the trained weights.
        assert not torch.equal(m, f), name
        assert not torch.equal(e, m) and not torch.equal(e, f), name


def test_sample_cli_writes_one_mp4_per_prompt(family_runs, tmp_path):
    run_dir = family_runs["tiny"]
    out = tmp_path / "clips"
    proc = subprocess.run([sys.executable, "-m", "litegen.tools.sample", str(run_dir / "checkpoints" / "step-0000002"),
                           "--prompt", "a red circle moving left on a blue background",
                           "--prompt", "a green square moving up on a white background",
                           "--steps", "3", "--guidance", "2.5", "--seed", "7", "--format", "mp4",
                           "--frames", "4", "--out", str(out)],
                          cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 steps, guidance 2.5, seed 7" in proc.stdout
    clips = sorted(out.glob("*.mp4"))
    assert [c.name[:3] for c in clips] == ["00-", "01-"]
    for clip in clips:
        frames, fps = read_video(clip)
        assert frames.shape[0] == 4 and fps == 8
    assert (out / "01-a-green-square-moving-up-on-a-white-background.txt").read_text().strip() == \
        "a green square moving up on a white background"
    bad = subprocess.run([sys.executable, "-m", "litegen.tools.sample", str(tmp_path)],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "neither a checkpoint" in bad.stderr
