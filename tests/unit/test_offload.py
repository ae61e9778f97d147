"""Activation offload on CPU: what moves, when, in which order, how much is resident, and that the
host arena is reused. The copy engine is the real one (SyncCopies, or StreamCopies over a recording
stand-in for a device module), so the CUDA path's ordering logic runs here too."""

import contextlib

import pytest
import torch
from memory_helpers import (EXPERIMENTS, TEXT_LEN, assert_equal_grads, gradients, model_config,  # noqa: F401
                            model_inputs, one_thread, tiny_model)

from litegen.models.activations import Precision, activation_model, unit_counts
from litegen.parallel.memory import MemorySettings
from litegen.parallel.offload import HostArena, StreamCopies, SyncCopies
from litegen.parallel.saved_bytes import SavedBytes

THW, BATCH = (4, 8, 16), 2


class _Pending:
    """A copy that has not finished until the compute stream is made to wait for it."""

    def __init__(self):
        self.waited = False

    def query(self) -> bool:
        return self.waited


class SlowCopies(SyncCopies):
    """Copies whose completion is never observed by itself: the offloader has to wait for them."""

    def to_host(self, src, dst):
        super().to_host(src, dst)
        return _Pending()

    def to_device(self, src):
        return super().to_device(src)[0], _Pending()

    def wait(self, event):
        event.waited = True


def offloaded(experiment: str, settings: MemorySettings, copies=None, steps: int = 1):
    cfg = model_config(experiment)
    net, plan, offloader = tiny_model(cfg, settings, copies)
    inputs = model_inputs(cfg, THW, BATCH)
    grads = gradients(net, inputs, steps)
    return cfg, net, plan, offloader, inputs, grads


@pytest.mark.parametrize("settings", [MemorySettings(offload_ratio=1.0),
                                      MemorySettings("full", offload_ratio=1.0),
                                      MemorySettings("selective", 0.5, "save_attention", offload_ratio=0.5)],
                         ids=["plain", "full", "selective_half"])
def test_bytes_moved_equal_the_analytic_count(settings):
    cfg, _, _, offloader, _, _ = offloaded("tiny", settings, steps=2)
    block = activation_model(cfg, Precision(4)).block
    counts = unit_counts(cfg, (cfg.in_channels, *THW), TEXT_LEN, BATCH)
    per_step = sum((block.inputs if mode.checkpoint else block.saved).bytes(counts)
                   for mode in settings.blocks(cfg.num_layers) if mode.offload)
    assert per_step > 0
    assert offloader.bytes_to_host == 2 * per_step


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_bytes_moved_equal_the_counted_saved_tensors(experiment):
    """Every family: offload moves exactly the storages its blocks save (as saved_bytes counts them)."""
    settings = MemorySettings(offload_ratio=0.5)
    cfg, net, plan, offloader, inputs, _ = offloaded(experiment, settings)
    counter_net = tiny_model(cfg)[0]
    with SavedBytes(counter_net, plan) as counted:
        counter_net(*inputs)
    expected = sum(counted.blocks[i] for i in settings.offloaded(len(counted.blocks)))
    assert offloader.bytes_to_host == expected


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_resident_blocks_stay_within_prefetch_plus_one(prefetch):
    settings = MemorySettings(offload_ratio=1.0, prefetch_blocks=prefetch)
    cfg = model_config("tiny")
    reference = gradients(tiny_model(cfg)[0], model_inputs(cfg, THW, BATCH))
    _, _, _, offloader, _, grads = offloaded("tiny", settings, SlowCopies(torch.device("cpu")))
    assert_equal_grads(grads, reference)
    assert offloader.max_resident_blocks == prefetch + 1  # the bound holds and copies do overlap


def test_forward_copies_in_order_and_backward_prefetches_ahead():
    settings = MemorySettings(offload_ratio=1.0, prefetch_blocks=1)
    _, _, _, offloader, _, _ = offloaded("tiny", settings, SlowCopies(torch.device("cpu")))
    log = offloader.log
    to_host = [block for event, block, _ in log if event == "to_host"]
    assert to_host == sorted(to_host) and set(to_host) == {0, 1, 2, 3}
    backward = [i for i, (event, _, _) in enumerate(log) if event == "backward"]
    assert [log[i][1] for i in backward] == [3, 2, 1, 0]
    # Blocks 0 and 1 were released in forward (only one earlier block may stay in flight): each is
    # fetched while the block above it runs backward, before backward reaches it.
    for block in (1, 0):
        fetch = next(i for i, (event, b, _) in enumerate(log) if event == "to_device" and b == block)
        reached = next(i for i in backward if log[i][1] == block)
        above = next(i for i in backward if log[i][1] == block + 1)
        assert above < fetch < reached


class RecordingDevice:
    """Stand-in for torch.cuda: streams and events that log what is ordered after what."""

    def __init__(self):
        self.log = []
        self.compute = self.Stream("compute", self)

    class Stream:
        def __init__(self, name, device=None):
            self.name = name if isinstance(name, str) else "side"
            self.device = device if isinstance(device, RecordingDevice) else None

        def record_event(self):
            event = _Pending()
            event.name = f"{self.name}#{len(self.device.log)}"
            self.device.log.append(("record", self.name, event.name))
            return event

        def wait_event(self, event):
            self.device.log.append(("wait", self.name, event.name))
            if self.name == "compute":
                event.waited = True

    def current_stream(self, device):
        return self.compute

    @contextlib.contextmanager
    def stream(self, stream):
        self.log.append(("copy_on", stream.name, None))
        yield

    def synchronize(self, *args):
        raise AssertionError("offload must order copies with events, never synchronise the device")


def test_stream_copies_order_by_events_only():
    device = RecordingDevice()
    copies = StreamCopies(torch.device("cpu"), module=device)
    copies.stream = RecordingDevice.Stream("side", device)
    settings = MemorySettings("full", offload_ratio=1.0, prefetch_blocks=0)
    cfg = model_config("tiny")
    reference = gradients(tiny_model(cfg)[0], model_inputs(cfg, THW, BATCH))
    _, _, _, offloader, _, grads = offloaded("tiny", settings, copies)
    assert_equal_grads(grads, reference)
    log = device.log
    copies_at = [i for i, entry in enumerate(log) if entry[0] == "copy_on"]
    assert len(copies_at) == len([e for e in offloader.log if e[0] in ("to_host", "to_device")]) > 0
    for i in copies_at:  # compute records, the side stream waits for it, copies, records its own
        assert log[i - 2][:2] == ("record", "compute") and log[i - 1] == ("wait", "side", log[i - 2][2])
        assert log[i + 1][:2] == ("record", "side")
    side_events = {entry[2] for entry in log if entry[:2] == ("record", "side")}
    waited_by_compute = {entry[2] for entry in log if entry[:2] == ("wait", "compute")}
    assert waited_by_compute and waited_by_compute <= side_events  # and back: compute waits on copies


def test_host_arena_is_reused_after_the_first_step():
    cfg = model_config("tiny")
    net, _, offloader = tiny_model(cfg, MemorySettings(offload_ratio=1.0))
    inputs = model_inputs(cfg, THW, BATCH)
    gradients(net, inputs)
    after_first = (offloader.arena.allocations, offloader.arena.capacity_bytes)
    assert after_first[1] >= offloader.bytes_to_host  # sized to the largest need (plus alignment)
    gradients(net, inputs, steps=2)
    smaller = model_inputs(cfg, (4, 8, 8), BATCH)
    gradients(net, smaller)
    assert (offloader.arena.allocations, offloader.arena.capacity_bytes) == after_first
    assert offloader.arena.live == 0  # every slot came back


def test_arena_grows_once_to_the_high_water_mark():
    arena = HostArena(pin=False)
    for n in (1000, 3000, 5000):
        arena.alloc(n)
    grown = arena.allocations
    for _ in range(3):
        arena.release()
    assert arena.capacity_bytes >= 9000 and arena.allocations == grown + 1
    for n in (1000, 3000, 5000):
        arena.alloc(n)
    assert arena.allocations == grown + 1
