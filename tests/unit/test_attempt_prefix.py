"""Store keys are scoped to the torchrun attempt exactly where torchrun shares one store across
attempts and every worker agrees on the attempt number (one node)."""

import pytest

from litegen.parallel.distributed import attempt_prefix, warn_if_restarts_share_store

ONE_NODE = {"TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "2",
            "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4", "TORCHELASTIC_MAX_RESTARTS": "3"}


@pytest.mark.parametrize("changes, prefix", [
    ({}, "litegen/attempt2/"),
    ({"TORCHELASTIC_USE_AGENT_STORE": "False"}, ""),  # a fresh store per attempt already
    ({"LOCAL_WORLD_SIZE": "2"}, ""),  # two nodes: restart counts may differ between agents
])
def test_attempt_prefix(monkeypatch, changes, prefix):
    for key, value in {**ONE_NODE, **changes}.items():
        monkeypatch.setenv(key, value)
    assert attempt_prefix() == prefix


def test_multi_node_restarts_on_shared_store_warn(monkeypatch, capsys):
    for key, value in {**ONE_NODE, "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    warn_if_restarts_share_store()
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in capsys.readouterr().err
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    warn_if_restarts_share_store()
    assert capsys.readouterr().err == ""
