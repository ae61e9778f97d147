"""Activation offload: what autograd saves inside chosen blocks goes to host memory during forward
and comes back, a block ahead, during backward.

Inside an offloaded block's forward a `saved_tensors_hooks` pair is active. Pack copies each
saved storage (once, however many views of it are saved) into a host arena and returns a handle;
unpack returns a view of the storage back on the device. For a checkpointed block the only thing
saved is its input (non-reentrant checkpoint saves inputs through these hooks), otherwise every
activation. Parameters and the arguments every block shares (time embedding, text, RoPE; named
by the plan's `block_stream`) stay where they are.

Copies go through a `Copies` engine. On CUDA (`StreamCopies`) they run on a side stream, ordered
by events only: device -> host waits for an event recorded on the compute stream when the tensor
was saved, and the compute stream waits for the host -> device event before a fetched tensor is
used; nothing synchronises the device. On CPU (`SyncCopies`) the same logic copies inline, so the
tests see what is saved, when, in which order and how many bytes are in flight.

Residency: forward keeps at most `prefetch_blocks` earlier blocks' copies in flight (the compute
stream waits for the oldest beyond that), and backward fetches the next `prefetch_blocks`
offloaded blocks when a block's first saved tensor is unpacked, releasing blocks above it: at most
prefetch_blocks + 1 offloaded blocks hold device memory at once.
"""

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

_ALIGN_BYTES = 512  # arena slots start on DMA-friendly boundaries (and suit every dtype's alignment)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN_BYTES) * _ALIGN_BYTES


class HostArena:
    """Host memory for offloaded bytes: bump-allocated within a step, reset when all is back.

    A step that needs more than the buffer holds takes overflow chunks (each at least as large as
    everything used so far, so there are few); at the next reset the buffer is replaced by one of
    the step's high-water size, so later steps of the same shapes never allocate again.
    `allocations` counts host allocations (pinned ones are expensive).
    """

    def __init__(self, pin: bool):
        self.pin = pin
        self.buffer: Optional[Tensor] = None
        self.chunk: Optional[Tensor] = None  # the overflow chunk being filled
        self.overflowed = False
        self.offset = self.chunk_offset = self.used_bytes = self.high_water_bytes = 0
        self.live = 0  # slots handed out and not yet released
        self.allocations = 0

    @property
    def capacity_bytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel()

    def _new(self, nbytes: int) -> Tensor:
        self.allocations += 1
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)

    def alloc(self, nbytes: int) -> Tensor:
        if self.offset + nbytes <= self.capacity_bytes:
            slot = self.buffer[self.offset:self.offset + nbytes]
            self.offset += _aligned(nbytes)
        else:
            if self.chunk is None or self.chunk_offset + nbytes > self.chunk.numel():
                self.chunk, self.chunk_offset = self._new(max(_aligned(nbytes), self.used_bytes)), 0
                self.overflowed = True
            slot = self.chunk[self.chunk_offset:self.chunk_offset + nbytes]
            self.chunk_offset += _aligned(nbytes)
        self.used_bytes += _aligned(nbytes)
        self.high_water_bytes = max(self.high_water_bytes, self.used_bytes)
        self.live += 1
        return slot

    def release(self) -> None:
        self.live -= 1
        if self.live == 0:
            if self.overflowed:  # grow once to what the step needed: one buffer from now on
                self.buffer = self._new(self.high_water_bytes)
            self.chunk, self.overflowed = None, False
            self.offset = self.chunk_offset = self.used_bytes = 0


class _Done:
    """The event of a copy that has already happened (synchronous copies)."""

    def query(self) -> bool:
        return True


DONE = _Done()


class SyncCopies:
    """Copies inline on the calling thread: CPU runs, and the base of the tests' recording engine."""

    def __init__(self, device: torch.device):
        self.device = device

    def to_host(self, src: Tensor, dst: Tensor) -> Any:
        dst.copy_(src)
        return DONE

    def to_device(self, src: Tensor) -> tuple[Tensor, Any]:
        return src.to(self.device, copy=True), DONE

    def done(self, event: Any) -> bool:
        return event.query()

    def wait(self, event: Any) -> None:
        """Make the compute stream wait for `event` (no host blocking)."""



class StreamCopies(SyncCopies):
    """Copies on a side stream of the device, ordered against the compute stream by events only.

    `module` is the device's torch module (torch.cuda, ...); tests pass a recording stand-in.
    """

    def __init__(self, device: torch.device, module=None):
        super().__init__(device)
        self.module = module or torch.get_device_module(device)
        self.stream = self.module.Stream(device)

    def _compute(self):
        return self.module.current_stream(self.device)

    def _after_compute(self) -> None:
        """The side stream's next work starts after everything queued on compute so far."""
        self.stream.wait_event(self._compute().record_event())

    def to_host(self, src: Tensor, dst: Tensor) -> Any:
        self._after_compute()  # src is written by kernels already queued on the compute stream
        with self.module.stream(self.stream):
            dst.copy_(src, non_blocking=True)
        return self.stream.record_event()

    def to_device(self, src: Tensor) -> tuple[Tensor, Any]:
        # Allocated on the compute stream (it will use and free it there); the side stream writes
        # it only after compute has passed the allocation, i.e. whatever used the memory before.
        fetched = torch.empty(src.shape, dtype=src.dtype, device=self.device)
        self._after_compute()
        with self.module.stream(self.stream):
            fetched.copy_(src, non_blocking=True)
        return fetched, self.stream.record_event()

    def wait(self, event: Any) -> None:
        self._compute().wait_event(event)


def copies_for(device: torch.device) -> SyncCopies:
    """Side-stream copies where the device has streams (CUDA and other accelerators), else inline."""
    return StreamCopies(device) if device.type != "cpu" else SyncCopies(device)


def _storage_key(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _as_bytes(t: Tensor) -> Tensor:
    """The whole storage under t as a flat uint8 tensor (views of one storage are copied once)."""
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())


@dataclass(eq=False)
class _Stored:
    """One storage moved to the host; `device` holds it on the device while needed there."""

    host: Tensor
    device: Optional[Tensor]
    event: Any  # the copy that filled `host` (forward) or `device` (backward)
    fetched: bool = False  # device is a copy back (False: the original, possibly still being read)
    owners: int = 0  # handles alive
    pending: int = 0  # handles not yet unpacked in this backward

    @property
    def nbytes(self) -> int:
        return self.host.numel()


class _BlockRecord:
    """One offloaded block call in one forward pass, linked to its neighbours in that pass."""

    def __init__(self, index: int, prev: Optional["_BlockRecord"]):
        self.index, self.prev = index, prev  # prev: the previous offloaded block of the pass
        self._next = None  # weak: a pass's records are freed with its handles, no cycle to collect
        self.stored: list[_Stored] = []
        self.unpacked = False  # backward has reached this block
        if prev is not None:
            prev._next = weakref.ref(self)

    @property
    def next(self) -> Optional["_BlockRecord"]:
        return self._next() if self._next is not None else None

    def on_device(self) -> list[_Stored]:
        return [s for s in self.stored if s.device is not None]


class _Handle:
    """What pack returns: a view (dtype, size, stride, offset) of a stored storage."""

    def __init__(self, offloader: "ActivationOffloader", block: _BlockRecord, stored: _Stored, t: Tensor):
        self.offloader, self.block, self.stored = offloader, block, stored
        self.view = (t.dtype, t.size(), t.stride(), t.storage_offset())
        stored.owners += 1
        stored.pending += 1
        self.unpacked = False

    def __del__(self):  # autograd dropped the saved tensor: its host slot may be reused
        self.offloader._drop_owner(self.stored)


class ActivationOffloader:
    """Moves saved activations of offloaded blocks to host and back (see the module docstring)."""

    def __init__(self, device: torch.device, prefetch_blocks: int = 1, copies: Optional[SyncCopies] = None):
        self.device = torch.device(device)
        self.prefetch_blocks = prefetch_blocks
        self.copies = copies or copies_for(self.device)
        self.arena = HostArena(pin=self.device.type == "cuda")
        self._last: Optional[_BlockRecord] = None  # the latest offloaded block of this forward
        self._keep: set[int] = set()  # storages to leave alone in the block being recorded
        self.bytes_to_host = self.bytes_to_device = 0
        self.max_resident_blocks = 0
        self.log: list[tuple] = []  # (event, block index, bytes): what moved, in order

    # ---- forward ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def saving(self, index: int, keep: set[int]):
        """Offload what autograd saves inside this block call; `keep`: storages left in place."""
        record = self._begin(index)
        self._keep = keep
        hooks = torch.autograd.graph.saved_tensors_hooks(
            lambda t: self._pack(record, t), self._unpack)
        with hooks:
            yield
        self._note_residency()

    def _begin(self, index: int) -> _BlockRecord:
        last = self._last
        if last is not None and index <= last.index:
            last = None  # a new forward pass starts
        record = _BlockRecord(index, prev=last)
        self._last = record
        self._retire(record)
        return record

    def _retire(self, record: _BlockRecord) -> None:
        """Free originals whose copy is done; keep at most prefetch_blocks earlier blocks in flight."""
        age, block = 0, record.prev
        while block is not None:  # newest first
            in_flight = block.on_device()
            for stored in in_flight:
                if age >= self.prefetch_blocks or self.copies.done(stored.event):
                    self._release_device(stored, block)
            age += bool(in_flight)
            block = block.prev

    def _pack(self, record: _BlockRecord, t: Tensor) -> Any:
        if t.device.type != self.device.type or _storage_key(t) in self._keep:
            return t  # parameters, shared block arguments, tensors on another device
        key = _storage_key(t)
        stored = next((s for s in record.stored if s.device is not None and _storage_key(s.device) == key), None)
        if stored is None:
            with torch.no_grad():
                source = _as_bytes(t)
                host = self.arena.alloc(source.numel())
                stored = _Stored(host, source, self.copies.to_host(source, host))
            record.stored.append(stored)
            self.bytes_to_host += stored.nbytes
            self.log.append(("to_host", record.index, stored.nbytes))
        return _Handle(self, record, stored, t)

    # ---- backward -----------------------------------------------------------------------------

    def _unpack(self, handle: Any) -> Tensor:
        if isinstance(handle, Tensor):
            return handle
        block, stored = handle.block, handle.stored
        if not block.unpacked:
            self._enter_backward(block)
        if stored.device is None:  # released early (or a second backward): fetch it now
            self._fetch(stored, block)
            self._note_residency()
        if stored.fetched and not self.copies.done(stored.event):
            self.copies.wait(stored.event)  # compute reads the fetched copy only once it has landed
        dtype, size, stride, offset = handle.view
        out = torch.empty(0, dtype=dtype, device=self.device).set_(
            stored.device.untyped_storage(), offset, size, stride)
        if not handle.unpacked:
            handle.unpacked = True
            stored.pending -= 1
            if stored.pending == 0:
                self._release_device(stored, block)  # autograd now owns what it uses
        return out

    def _enter_backward(self, block: _BlockRecord) -> None:
        """Backward reached `block`: blocks above it are done; fetch the next ones ahead."""
        block.unpacked = True
        self.log.append(("backward", block.index, 0))
        above = block.next
        while above is not None:
            for stored in above.on_device():
                self._release_device(stored, above)
            above = above.next
        ahead = block
        for _ in range(self.prefetch_blocks + 1):  # this block (if released), then the next ones
            if ahead is None:
                break
            for stored in ahead.stored:
                if stored.device is None and stored.pending:
                    self._fetch(stored, ahead)
            ahead = ahead.prev
        self._note_residency()

    def _fetch(self, stored: _Stored, block: _BlockRecord) -> None:
        stored.device, stored.event = self.copies.to_device(stored.host)
        stored.fetched = True
        self.bytes_to_device += stored.nbytes
        self.log.append(("to_device", block.index, stored.nbytes))

    def _release_device(self, stored: _Stored, block: Optional[_BlockRecord]) -> None:
        if stored.device is None:
            return
        if not self.copies.done(stored.event):
            # The side stream may still read (original) or write (fetch) this memory: compute-stream
            # work that may reuse it once it is freed must come after that copy.
            self.copies.wait(stored.event)
        stored.device = None
        if block is not None:
            self.log.append(("release", block.index, stored.nbytes))

    def _drop_owner(self, stored: _Stored) -> None:
        stored.owners -= 1
        if stored.owners == 0:
            self._release_device(stored, None)
            self.arena.release()

    # ---- accounting ---------------------------------------------------------------------------

    def resident_blocks(self) -> int:
        """Offloaded blocks of the latest forward pass that hold device memory now."""
        count, block = 0, self._last
        while block is not None:
            count += bool(block.on_device())
            block = block.prev
        return count

    def _note_residency(self) -> None:
        self.max_resident_blocks = max(self.max_resident_blocks, self.resident_blocks())

    def state_dict(self) -> dict[str, int]:
        """Counters only (nothing to resume: offloaded tensors never outlive a step)."""
        return {"bytes_to_host": self.bytes_to_host, "bytes_to_device": self.bytes_to_device,
                "max_resident_blocks": self.max_resident_blocks,
                "host_allocations": self.arena.allocations,
                "host_capacity_bytes": self.arena.capacity_bytes}
