"""User mistakes give one clear message (the field, or the shard and key, and the fix), exit
code 2 and no traceback: config overrides, bad data under data.bad_sample=raise (also raised
from a DataLoader worker), missing shards, the prep tool's --input."""

import os
import subprocess
import sys

import pytest
from conftest import REPO, tiny_overrides

from litegen.config.errors import (ConfigError, DataFileNotFound, DataValueError, NoUsableData, UserError,
                                   user_message)
from litegen.data.shards import BadSample
from litegen.train.main import check_overrides


def _cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "litegen.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("overrides, expected", [
    (["train.stepz=3"], "Key 'stepz' not in 'TrainConfig'"),
    (["train.steps=abc"], "train.steps=abc"),
    (["train.steps=-5"], "train.steps: must be > 0, got -5"),
    (["train.nonfinite=maybe"], "train.nonfinite: must be one of ['stop', 'skip']"),
    (["train.step_timeout_s=-1"], "train.step_timeout_s: must be >= 0"),
    (["parallel=deepspeed", "train.nonfinite=skip"], "train.nonfinite: skip needs parallel.backend fsdp2 or ddp"),
    (["model=nosuch"], "Could not find 'model/nosuch'"),
])
def test_bad_override_exits_2_naming_the_field(overrides, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        check_overrides(["experiment=tiny", "hydra.run.dir=/tmp/x", *overrides])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err


def test_good_overrides_pass_the_check():
    check_overrides(["experiment=tiny", "hydra.run.dir=/tmp/x", "train.steps=3", "--multirun"])
    check_overrides(["experiment=tiny", "train.steps=3"])


def test_data_errors_are_user_errors_and_keep_their_types():
    assert issubclass(BadSample, UserError) and issubclass(BadSample, ValueError)
    assert issubclass(DataFileNotFound, FileNotFoundError) and issubclass(DataValueError, ValueError)
    assert issubclass(NoUsableData, RuntimeError) and issubclass(ConfigError, UserError)
    # A DataLoader worker's error comes back with the worker's traceback folded into its text.
    folded = BadSample("Caught BadSample in DataLoader worker process 1.\nOriginal Traceback (most recent "
                       "call last):\n  File \"x.py\", line 1, in f\nlitegen.data.shards.BadSample: "
                       "d/shard-000002.tar: sample 'k13': undecodable (latent: boom)\n")
    assert user_message(folded).splitlines()[0] == "d/shard-000002.tar: sample 'k13': undecodable (latent: boom)"
    assert "fix: " in user_message(folded) and "data.bad_sample=skip" in user_message(folded)


def test_prep_bad_input_exits_2(tmp_path, capsys):
    from litegen.tools.prep import cli

    assert cli(["--input", str(tmp_path / "nothing"), "--out", str(tmp_path / "out"), "--buckets", "8x32x32"]) == 2
    assert capsys.readouterr().err.startswith(f"error: --input {tmp_path / 'nothing'}: no such folder or file")


@pytest.mark.slow
def test_cli_typo_and_bad_sample_exit_2_without_traceback(tmp_path):
    from corrupt_data import make_corrupt_dataset

    typo = _cli(tiny_overrides("unused", tmp_path / "typo", "train.stepz=3"), tmp_path)
    assert typo.returncode == 2 and "error: Could not override 'train.stepz'" in typo.stderr, typo.stderr
    assert "Traceback" not in typo.stderr + typo.stdout
    shards = make_corrupt_dataset(tmp_path / "corrupt")
    bad = _cli(tiny_overrides(shards, tmp_path / "bad", "data.bad_sample=raise", "data.num_workers=2",
                              "data.batch_size=4", "train.steps=30", "train.sample.enabled=false"), tmp_path)
    err = bad.stderr
    assert bad.returncode == 2, (bad.stdout[-2000:], err[-3000:])
    assert "error: " in err and ".tar: sample 'shapes-0000" in err and "fix: " in err, err[-3000:]
    assert "Traceback" not in err + bad.stdout
