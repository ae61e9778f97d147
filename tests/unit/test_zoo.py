"""benchmarks/zoo.py: its table covers every published config; its GPU timing path runs (on CPU)."""

import importlib.util

import pytest
import torch

from conftest import REPO


@pytest.fixture(scope="module")
def zoo():
    spec = importlib.util.spec_from_file_location("zoo", REPO / "benchmarks" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_has_every_published_config(zoo):
    rows = {r["config"]: r for r in zoo.table_rows()}
    assert set(rows) == {"wan_1_3b", "wan_14b", "cogvideox_2b", "cogvideox_5b", "vchitect_2b", "snapvideo",
                         "worlddreamer"}
    assert rows["wan_14b"]["params"] == 14_288_491_584 and rows["wan_14b"]["tokens"] == 21 * 30 * 52
    assert rows["cogvideox_5b"]["flops_per_token"] > rows["cogvideox_2b"]["flops_per_token"] > 6 * 1.6e9
    # The planner's layout for 8x80 GiB: every reference clip fits, with a named SP degree.
    assert all(r["layout"].startswith("sp ") and "micro-batch" in r["layout"] for r in rows.values()), rows


@pytest.mark.parametrize("config, objective", [("cogvideox_tiny", "v_prediction"),
                                               ("worlddreamer_tiny", "masked_tokens")])
def test_measure_runs_a_step_and_reports_mfu(zoo, config, objective):
    ref = zoo.Reference(config, objective, "tiny", (12, 2, 8, 8), 8, {"num_layers": 1})
    result = zoo.measure(ref, torch.device("cpu"), steps=1, peak_tflops=1.0)
    assert result["step_s"] > 0 and 0 < result["mfu"] < 1 and result["params"] > 0
