#!/usr/bin/env bash
# Start LiteGen under torchrun on this node; all arguments are Hydra overrides for litegen.train.
#   single node:  launch/torchrun.sh experiment=tiny parallel.dp_shard=-1
#   multi node:   NNODES=4 RDZV_ENDPOINT=node0:29500 launch/torchrun.sh experiment=...
# Environment (defaults): NPROC_PER_NODE (GPUs on this node, else 1), NNODES (1),
# RDZV_ENDPOINT (localhost:29500), RDZV_ID (litegen), OMP_NUM_THREADS (cores / procs).
set -euo pipefail
gpus=$(nvidia-smi -L 2>/dev/null | wc -l || true)
NPROC_PER_NODE=${NPROC_PER_NODE:-$(( gpus > 0 ? gpus : 1 ))}
NNODES=${NNODES:-1}
RDZV_ENDPOINT=${RDZV_ENDPOINT:-localhost:29500}
RDZV_ID=${RDZV_ID:-litegen}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC_PER_NODE > 0 ? $(nproc) / NPROC_PER_NODE : 1 ))}
# On CUDA: make NCCL failures surface as errors with a flight-recorder dump, not silent hangs.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
export TORCH_NCCL_TRACE_BUFFER_SIZE=${TORCH_NCCL_TRACE_BUFFER_SIZE:-2000}
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "$RDZV_ID" \
  -m litegen.train "$@"
