"""Memory planner: per clip shape, the SP degree, checkpointing, offload and micro-batch that make a
training step fit one GPU with a safety margin and the fewest recomputed FLOPs.

Per rank, a step needs model states (parameters, gradients, AdamW moments, sharded by the backend,
plus FSDP2's gathered working copies), the activations every block keeps for backward
(litegen/models/activations.py; offloaded blocks keep theirs on the host, except a window of
prefetch_blocks + 1 blocks in flight), the embeddings' and head's activations, and a backward
working set: the gradients of one block's activations (GRADIENT_WORKING_SET) plus, for a
checkpointed block, what its recompute brings back. A block is offloaded only where its copy (bytes / host-link bandwidth)
takes no longer than its forward compute (FLOPs / sustained TFLOP/s), so the copy hides.

Choice order: fewest recomputed FLOPs (fraction of the step), then the smallest SP degree (less
communication), then the largest micro-batch, then the fewest checkpointed and offloaded blocks.
Offloaded blocks are the first ones (litegen/parallel/memory.py says why).
"""

import math
from dataclasses import dataclass, replace
from typing import Iterator, Optional

import torch

from litegen.config import ConfigError
from litegen.models import build_model, count_params, model_family, model_plan
from litegen.models.activations import ActivationModel, Counts, Precision, activation_model, unit_counts
from litegen.parallel.dims import ParallelDims
from litegen.parallel.memory import MemorySettings
from litegen.parallel.sequence import sequence_parallel_problems

GIB = 2**30
# Gradients of one block's activations alive at once during its backward, as a fraction of what the
# block saves (the FFN's f-wide pair and a few d-wide fp32 residual gradients in a Wan block at
# bf16: ~0.4). An estimate: benchmarks/gpu_memory.py prints predicted vs measured peaks to check it.
GRADIENT_WORKING_SET = 0.5
POLICIES = ("save_matmuls", "save_attention", "recompute_all")


@dataclass(frozen=True)
class Hardware:
    gpu_mem_gib: float
    host_link_gb_s: float = 25.0
    gpu_tflops: float = 400.0  # sustained by the model, for "does a block's copy hide?"
    margin: float = 0.1

    @property
    def usable_bytes(self) -> float:
        return self.gpu_mem_gib * GIB * (1 - self.margin)

    def describe(self, world_size: int) -> str:
        return (f"{world_size} x {self.gpu_mem_gib:g} GiB (margin {self.margin:.0%}: "
                f"{size(self.usable_bytes)} usable), host link {self.host_link_gb_s:g} GB/s, "
                f"{self.gpu_tflops:g} TFLOP/s sustained")


@dataclass(frozen=True)
class ModelFacts:
    """What the planner needs from a model config (built once on meta: no memory)."""

    cfg: object
    params: int
    block_params: int
    layers: int
    sp_capable: bool  # has the token-stack seam sequence parallelism needs
    plan: object = None  # the family's ModelPlan: which SP layouts its attention kinds allow

    @classmethod
    def from_config(cls, cfg) -> "ModelFacts":
        with torch.device("meta"):
            net = build_model(cfg)
        plan = model_plan(cfg)
        blocks = plan.block_list(net)
        return cls(cfg, count_params(net), count_params(blocks[0]), len(blocks),
                   getattr(net, plan.token_stack.method, None) is not None, plan)

    def sp_allowed(self, world_size: int, sp: int) -> bool:
        """Whether the family's attention cores run this SP degree (as the planner splits it:
        Ulysses takes what divides the heads, the ring the rest; grid cores refuse a ring)."""
        if sp == 1:
            return True
        if not self.sp_capable:
            return False
        heads = getattr(self.cfg, "num_heads", None)
        ulysses, ring = Layout(world_size, sp=sp).sp_split(heads)
        dims = ParallelDims(1, world_size // sp, ring, ulysses, world_size)
        return not sequence_parallel_problems(self.plan, dims, self.cfg.family, heads)


@dataclass(frozen=True)
class Layout:
    world_size: int
    backend: str = "fsdp2"
    zero_stage: int = 2
    sp: int = 1

    def sp_split(self, heads: Optional[int]) -> tuple[int, int]:
        """(ulysses, ring): Ulysses takes what divides the heads, the ring the rest."""
        ulysses = math.gcd(heads, self.sp) if heads else 1
        return ulysses, self.sp // ulysses


@dataclass
class Breakdown:
    states: float  # parameters, gradients, optimizer, FSDP working copies
    blocks: float  # activations the blocks keep on the device (offload window included)
    outside: float  # embeddings, head, loss
    working: float  # backward working set
    host: float  # offloaded bytes per step (pinned host memory)

    @property
    def total(self) -> float:
        return self.states + self.blocks + self.outside + self.working


@dataclass
class ClipPlan:
    latent: tuple[int, int, int, int]
    tokens: int
    layout: Layout
    batch: int
    settings: MemorySettings
    memory: Breakdown
    recompute_fraction: float
    copy_s: float  # per offloaded block (the largest)
    compute_s: float  # forward of one block

    def overrides(self, heads: Optional[int]) -> list[str]:
        """The plan as the config keys a manual run would set."""
        s, (ulysses, ring) = self.settings, self.layout.sp_split(heads)
        out = [f"parallel.sp_ulysses={ulysses}", f"parallel.sp_ring={ring}",
               f"parallel.activation_checkpointing={s.activation_checkpointing}"]
        if s.activation_checkpointing == "selective":
            out += [f"parallel.ac_ratio={s.ac_ratio:.4g}", f"parallel.ac_policy={s.ac_policy}"]
        if s.offload_ratio > 0:
            out += ["parallel.offload.enabled=true", f"parallel.offload.ratio={s.offload_ratio:.4g}",
                    f"parallel.offload.prefetch_blocks={s.prefetch_blocks}"]
        return out + [f"data.batch_size={self.batch}"]


def model_state_bytes(facts: ModelFacts, layout: Layout, precision: Precision) -> float:
    """fp32 masters + gradients + AdamW moments per rank, plus FSDP2's gathered working copies."""
    p, world = facts.params, layout.world_size
    if world == 1 or layout.backend == "ddp":
        return 16 * p + (4 * p if world > 1 else 0)  # DDP's gradient buckets
    if layout.backend == "deepspeed":
        share = math.ceil(p / world)
        stage = layout.zero_stage
        return 4 * (share if stage >= 3 else p) + 4 * (share if stage >= 2 else p) + 8 * share
    param_bytes = precision.compute_bytes
    root = p - facts.layers * facts.block_params  # kept gathered after forward
    return 16 * math.ceil(p / world) + param_bytes * (2 * facts.block_params + root) + 4 * facts.block_params


@dataclass(frozen=True)
class ClipCost:
    """FLOPs and activation bytes of one micro-batch of one clip shape on one rank."""

    counts: Counts
    step_flops: float  # forward + backward, this rank
    block_forward_flops: float
    block_attention_flops: float  # attention kernels, forward
    kept: dict  # checkpoint policy (None: plain) -> bytes a block keeps
    moved: dict  # checkpoint policy -> bytes an offloaded block sends to the host
    outside: float  # embeddings, head, shared block arguments, loss

    @classmethod
    def of(cls, facts: ModelFacts, model: ActivationModel, latent, text_len: int, batch: int,
           sp: int) -> "ClipCost":
        parts = model_family(facts.cfg).train_flops(facts.cfg, latent, text_len)
        skip = {"patch_embed", "text_embed", "time_embed", "head", "total"}
        block = sum(v for k, v in parts.items() if k not in skip) / 3 / facts.layers
        attention = sum(v for k, v in parts.items() if k.endswith("core")) / 3 / facts.layers
        counts, scale = unit_counts(facts.cfg, latent, text_len, batch, sp), batch / sp
        kept = {policy: model.block.kept(policy).bytes(counts) for policy in (None, *POLICIES)}
        moved = {policy: (model.block.inputs if policy else model.block.saved).bytes(counts)
                 for policy in kept}
        outside = model.outside.bytes(counts) + _loss_bytes(facts.cfg, counts)
        return cls(counts, parts["total"] * scale, block * scale, attention * scale, kept, moved, outside)

    def recompute_flops(self, policy: Optional[str]) -> float:
        return {None: 0.0, "save_matmuls": 0.0, "recompute_all": self.block_forward_flops,
                "save_attention": self.block_forward_flops - self.block_attention_flops}[policy]


def _loss_bytes(cfg, counts: Counts) -> float:
    # The objective's loss on the prediction (fp32 prediction and target difference): an estimate.
    return 2 * 4 * cfg.out_channels * math.prod(cfg.patch_size) * counts.token


def evaluate(cost: ClipCost, settings: MemorySettings, layers: int, states: float,
             hw: Hardware) -> tuple[Optional[Breakdown], float, float]:
    """(memory breakdown, largest offloaded block's copy seconds, block forward seconds).

    The breakdown is None when an offloaded block's copy would not hide under its compute.
    """
    modes = settings.blocks(layers)
    compute_s = cost.block_forward_flops / (hw.gpu_tflops * 1e12)
    moved = [cost.moved[m.checkpoint] for m in modes if m.offload]
    copy_s = max(moved, default=0) / (hw.host_link_gb_s * 1e9)
    if copy_s > compute_s:
        return None, copy_s, compute_s
    device = sum(cost.kept[m.checkpoint] for m in modes) - sum(moved)
    window = (settings.prefetch_blocks + 1) * max(moved, default=0)
    full = cost.kept[None]
    recompute = max((full - cost.kept[m.checkpoint] for m in modes if m.checkpoint), default=0)
    working = GRADIENT_WORKING_SET * full + recompute
    return Breakdown(states, device + window, cost.outside, working, sum(moved)), copy_s, compute_s


def _checkpoint_options(n: int) -> Iterator[MemorySettings]:
    yield MemorySettings()
    for policy in POLICIES:
        for k in range(1, n + 1):
            if policy == "recompute_all" and k == n:
                yield MemorySettings("full")
            else:
                yield MemorySettings("selective", k / n, policy)


def _frugal(cost: ClipCost, layers: int, states: float, hw: Hardware, prefetch: int) -> Breakdown:
    """Full checkpointing with as many blocks offloaded as hide their copies."""
    for k_off in range(layers, -1, -1):
        settings = MemorySettings("full", offload_ratio=k_off / layers, prefetch_blocks=prefetch)
        memory = evaluate(cost, settings, layers, states, hw)[0]
        if memory is not None:
            return memory
    raise AssertionError("no offload always hides")


def best_settings(cost: ClipCost, layers: int, states: float, hw: Hardware, prefetch: int) -> Optional[tuple]:
    """The cheapest settings that fit: fewest recomputed FLOPs, checkpointed, then offloaded blocks.

    Returns (key, settings, breakdown, copy_s, compute_s, recompute fraction) or None.
    """
    if _frugal(cost, layers, states, hw, prefetch).total > hw.usable_bytes:
        return None
    ranked = sorted(_checkpoint_options(layers), key=lambda o: (
        sum(cost.recompute_flops(m.checkpoint) for m in o.blocks(layers)), len(o.checkpointed(layers))))
    for option in ranked:
        for k_off in range(layers + 1):
            settings = replace(option, offload_ratio=k_off / layers, prefetch_blocks=prefetch)
            memory, copy_s, compute_s = evaluate(cost, settings, layers, states, hw)
            if memory is None:
                break  # this block's copy does not hide; more offload includes it too
            if memory.total <= hw.usable_bytes:
                recompute = sum(cost.recompute_flops(m.checkpoint) for m in settings.blocks(layers))
                fraction = recompute / cost.step_flops
                key = (round(fraction, 9), len(option.checkpointed(layers)), k_off)
                return key, settings, memory, copy_s, compute_s, fraction
    return None


def sp_options(facts: ModelFacts, world_size: int, tokens: int) -> list[int]:
    return [d for d in range(1, world_size + 1)
            if world_size % d == 0 and d <= tokens and facts.sp_allowed(world_size, d)]


def plan_clip(facts: ModelFacts, latent, text_len: int, hw: Hardware, layout: Layout,
              precision: Precision, batches: list[int], sps: Optional[list[int]] = None,
              prefetch: int = 1, field: str = "gpu_mem_gib") -> ClipPlan:
    """Plan one clip shape (C, T, H, W); raises ConfigError naming what to change if nothing fits."""
    model = activation_model(facts.cfg, precision)
    tokens = unit_counts(facts.cfg, latent, text_len, 1).token
    chosen = None
    for sp in sps or sp_options(facts, layout.world_size, tokens):
        lay = replace(layout, sp=sp)
        states = model_state_bytes(facts, lay, precision)
        for batch in sorted(batches, reverse=True):
            cost = ClipCost.of(facts, model, latent, text_len, batch, sp)
            found = best_settings(cost, facts.layers, states, hw, prefetch)
            if found is None:
                continue
            key = (found[0][0], sp, -batch, *found[0][1:])
            if chosen is None or key < chosen[0]:
                chosen = (key, ClipPlan(tuple(latent), tokens, lay, batch, found[1], found[2], found[5],
                                        found[3], found[4]))
    if chosen is None:
        raise ConfigError([(field, infeasible_message(facts, latent, text_len, hw, layout,
                                                               precision, min(batches), prefetch))])
    return chosen[1]


def size(nbytes: float) -> str:
    """Bytes in GiB, or MiB below 1 GiB (tiny models plan too)."""
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB else f"{nbytes / 2**20:.1f} MiB"


def infeasible_message(facts: ModelFacts, latent, text_len: int, hw: Hardware, layout: Layout,
                       precision: Precision, batch: int, prefetch: int) -> str:
    """What the most memory-frugal layout would need, and what would make it fit."""
    tokens = unit_counts(facts.cfg, latent, text_len, 1).token
    sp = max(sp_options(facts, layout.world_size, tokens))
    lay = replace(layout, sp=sp)
    model = activation_model(facts.cfg, precision)
    cost, states = ClipCost.of(facts, model, latent, text_len, batch, sp), model_state_bytes(facts, lay, precision)
    memory = _frugal(cost, facts.layers, states, hw, prefetch)
    need = memory.total
    grid = "x".join(map(str, latent))
    fixes = [f"GPUs with >= {math.ceil(need / (1 - hw.margin) / GIB * 100) / 100:g} GiB (gpu_mem_gib)"]
    if states < hw.usable_bytes:
        per_token = (need - states) / tokens
        fixes.insert(0, f"clips of at most ~{int((hw.usable_bytes - states) / per_token):,} tokens")
    if facts.sp_capable:
        fixes.insert(0, f"a larger world_size (sequence parallelism over more ranks; now at most {sp})")
    return (f"latent {grid} ({tokens:,} tokens, micro-batch {batch}) does not fit {hw.describe(layout.world_size)}: "
            f"even with sp {sp}, full checkpointing and every block offloaded whose copy hides, a rank needs "
            f"{size(need)} (model states {size(states)}, activations {size(memory.blocks + memory.outside)}, "
            f"backward working set {size(memory.working)}). To fit, use {'; or '.join(fixes)}")


# ---- parallel.memory=auto: the planner's choice applied to a training run --------------------


def _pixel_shapes(cfg, bucket_names: list[str]) -> list[list[int]]:
    """Pixel [frames, height, width] of the named data buckets (all when none are named); without
    buckets, the synthetic data's shapes."""
    buckets = cfg.data.buckets
    if not buckets:
        return [list(shape) for shape in cfg.data.synthetic.shapes]
    return [list(buckets[name]) for name in (bucket_names or buckets)]


def planned_clips(cfg) -> list[tuple[tuple[int, int, int, int], int]]:
    """(latent (C, T, H, W), micro-batch) pairs to plan for: parallel.memory_plan.clips at
    data.batch_size, else every data stage's buckets at that stage's batch size, through the pixel
    encoder (a learned encoder needs memory_plan.clips)."""
    c, data = cfg.model.in_channels, cfg.data
    if cfg.parallel.memory_plan.clips:
        return sorted({((c, *clip), data.batch_size) for clip in cfg.parallel.memory_plan.clips})
    if data.token_budget > 0 or any(stage.token_budget for stage in data.stages):
        raise ConfigError([("parallel.memory_plan.clips", "parallel.memory=auto with packed batches "
                            "(data.token_budget > 0) needs the shapes to plan for: give "
                            "parallel.memory_plan.clips=[[1,H,W],...] with H*W/patch area = the token budget")])
    video = cfg.encoders.video
    if video.kind != "pixel":
        raise ConfigError([("parallel.memory_plan.clips", "parallel.memory=auto with a learned video "
                            "encoder needs the latent clip shapes: parallel.memory_plan.clips=[[T,H,W],...]")])
    tf, sf = video.temporal_factor, video.spatial_factor
    stages = [(stage.buckets, stage.batch_size or data.batch_size) for stage in data.stages] or [([], data.batch_size)]
    return sorted({((c, f // tf, h // sf, w // sf), batch)
                   for names, batch in stages for f, h, w in _pixel_shapes(cfg, names)})


def run_precision(cfg, device: torch.device, world_size: int) -> Precision:
    """What training will run in: bf16 autocast on CUDA (or train.mixed_precision=bf16), and
    whether autocast copies weights (no FSDP2 bf16 parameters to compute with directly)."""
    mode = cfg.train.mixed_precision
    bf16 = mode == "bf16" or (mode == "auto" and device.type == "cuda")
    fsdp_bf16 = (world_size > 1 and cfg.parallel.backend == "fsdp2"
                 and cfg.parallel.param_dtype in ("auto", "bf16"))
    return Precision(2 if bf16 else 4, weight_copies=bf16 and not fsdp_bf16)


def run_hardware(cfg, device: torch.device) -> Hardware:
    m = cfg.parallel.memory_plan
    gib = m.gpu_mem_gib
    if gib <= 0:
        if device.type != "cuda":
            raise ConfigError([("parallel.memory_plan.gpu_mem_gib", "parallel.memory=auto off a GPU "
                                "needs the device memory to plan for, e.g. parallel.memory_plan.gpu_mem_gib=80")])
        gib = torch.cuda.get_device_properties(device).total_memory / GIB
    return Hardware(gib, m.host_link_gb_s, m.gpu_tflops, m.margin)


def plan_run(cfg, world_size: int, device: torch.device, sp: Optional[int] = None) -> list[ClipPlan]:
    """One plan per (clip shape, micro-batch) of this run's data stages, model and backend.

    sp: the sequence-parallel degree to keep (None: the planner may choose one).
    """
    facts = ModelFacts.from_config(cfg.model)
    layout = Layout(world_size, cfg.parallel.backend, cfg.parallel.zero_stage)
    return [plan_clip(facts, latent, cfg.encoders.text.max_length, run_hardware(cfg, device), layout,
                      run_precision(cfg, device, world_size), [batch],
                      [sp] if sp else None, cfg.parallel.offload.prefetch_blocks,
                      field="parallel.memory_plan.gpu_mem_gib")
            for latent, batch in planned_clips(cfg)]


def auto_layout(cfg, world_size: int, device: torch.device):
    """cfg with the planner's SP degree (when the config leaves SP at 1) and, for the record, the
    memory settings of its most demanding clip; per-clip settings come from `auto_schedule`."""
    p = cfg.parallel
    if p.memory != "auto":
        return cfg
    keep_sp = p.sp_ulysses * p.sp_ring if p.sp_ulysses * p.sp_ring > 1 else None
    plans = plan_run(cfg, world_size, device, keep_sp)
    sp = max(plan.layout.sp for plan in plans)
    if sp != min(plan.layout.sp for plan in plans):  # one mesh per run: plan every clip at the largest
        plans = plan_run(cfg, world_size, device, sp)
    ulysses, ring = ((p.sp_ulysses, p.sp_ring) if keep_sp  # the user's own split of their SP degree
                     else plans[0].layout.sp_split(getattr(cfg.model, "num_heads", None)))
    s = max(plans, key=lambda plan: plan.tokens).settings
    parallel = replace(p, sp_ulysses=ulysses, sp_ring=ring, activation_checkpointing=s.activation_checkpointing,
                       ac_ratio=s.ac_ratio, ac_policy=s.ac_policy,
                       offload=replace(p.offload, enabled=s.offload_ratio > 0, ratio=s.offload_ratio or 1.0))
    return replace(cfg, parallel=parallel)


def auto_schedule(cfg, sp: int, device: torch.device, world_size: int):
    """MemorySchedule keyed by each clip's tokens per rank (planned at the run's SP degree)."""
    from litegen.parallel.memory import MemorySchedule

    plans = plan_run(cfg, world_size, device, sp)
    # Equal token counts (a shape at two stages' batch sizes): the most frugal plan comes first.
    plans.sort(key=lambda plan: (unit_counts(cfg.model, plan.latent, 0, plan.batch, sp).token,
                                 -plan.recompute_fraction, -plan.settings.offload_ratio))
    return MemorySchedule([(unit_counts(cfg.model, plan.latent, 0, plan.batch, sp).token, plan.settings)
                           for plan in plans])
