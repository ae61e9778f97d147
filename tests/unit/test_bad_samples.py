"""The bad-sample policy on a damaged dataset (tests/corrupt_data.py): exact skips, or a clear error."""

import itertools
import os

import pytest

from litegen.config.schema import DataConfig
from litegen.data.loader import build_loader, global_state
from corrupt_data import GOOD_KEYS, SKIPS, make_corrupt_dataset
from data_helpers import epoch_keys


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> str:
    return make_corrupt_dataset(tmp_path_factory.mktemp("corrupt") / "shapes")


def cfg(spec: str, **changes) -> DataConfig:
    return DataConfig(**{"shards": spec, "batch_size": 1, "shuffle_buffer": 3, "seed": 2, **changes})


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_counts_every_defect_once_and_ranks_keep_stepping(corrupt, num_workers):
    loaders = [build_loader(cfg(corrupt, num_workers=num_workers), rank, 2) for rank in range(2)]
    keys = epoch_keys(loaders, 0, units_per_epoch=4)  # steps both ranks in lock step
    assert sorted(keys) == GOOD_KEYS
    records = [r for x in loaders for r in x.skip_log() if r["epoch"] == 0]
    assert {(os.path.basename(r["shard"]), r["key"], r["reason"]) for r in records} == SKIPS
    assert len(records) == len(SKIPS)
    assert loaders[0].delivered == loaders[1].delivered  # one batch per rank per step, skips or not
    total = {}
    for x in loaders:
        for reason, n in x.skip_counts().items():
            total[reason] = total.get(reason, 0) + n
    assert sum(total.values()) >= 3 and set(total) == {"unreadable_shard", "undecodable", "missing_part"}


def test_skip_counters_survive_an_elastic_resume(corrupt):
    loaders = [build_loader(cfg(corrupt), rank, 2) for rank in range(2)]
    for x in loaders:
        list(itertools.islice(iter(x), 12))
    before = sum(sum(x.skip_counts().values()) for x in loaders)
    merged = build_loader(cfg(corrupt), 0, 1)
    merged.load_state_dict(global_state([x.state_dict() for x in loaders]))
    assert sum(merged.skip_counts().values()) == before > 0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_raise_names_shard_and_key(corrupt, num_workers):
    loader = build_loader(cfg(corrupt, bad_sample="raise", num_workers=num_workers, shuffle_buffer=0), 0, 1)
    with pytest.raises(ValueError, match=r"shard-00000[12]\.tar: sample 'shapes-0000(09|13|15)': "
                                         r"(unreadable shard|undecodable|missing part)"):
        list(itertools.islice(iter(loader), 30))
