#!/usr/bin/env bash
# Start LiteGen under torchrun on this node; all arguments are Hydra overrides for litegen.train.
#   one node:    launch/torchrun.sh experiment=tiny
#   many nodes:  NNODES=4 RDZV_ENDPOINT=node0:29500 launch/torchrun.sh model=wan_1_3b ...  (on every node)
# Environment (defaults): NPROC_PER_NODE (Slurm's GPUs on this node, else nvidia-smi's count, else
# 1), NNODES (1), RDZV_ENDPOINT (none: a single node picks a free port), RDZV_ID (litegen),
# OMP_NUM_THREADS (cores / processes), PYTHON (python).
# Exit code 75: the run checkpointed after a pre-emption signal and wants a requeue.
set -euo pipefail
gpus=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}
NPROC_PER_NODE=${NPROC_PER_NODE:-$(( ${gpus:-0} > 0 ? gpus : 1 ))}
NNODES=${NNODES:-1}
RDZV_ID=${RDZV_ID:-litegen}
PYTHON=${PYTHON:-python}
cores=$(nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / NPROC_PER_NODE > 0 ? cores / NPROC_PER_NODE : 1 ))}
if [ "${gpus:-0}" -gt 0 ]; then
  # NCCL: fail a stuck collective with an error instead of hanging, and keep a flight-recorder
  # trace of the last collectives per rank, dumped on timeout, to find the rank that stalled.
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
  export TORCH_NCCL_TRACE_BUFFER_SIZE=${TORCH_NCCL_TRACE_BUFFER_SIZE:-20000}
  export TORCH_NCCL_DUMP_ON_TIMEOUT=${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}
  export TORCH_NCCL_DEBUG_INFO_TEMP_FILE=${TORCH_NCCL_DEBUG_INFO_TEMP_FILE:-${TMPDIR:-/tmp}/litegen_nccl_trace_rank_}
fi
if [ -z "${RDZV_ENDPOINT:-}" ] && [ "$NNODES" -eq 1 ]; then
  rdzv=(--standalone)
else
  rdzv=(--nnodes "$NNODES" --rdzv-backend c10d --rdzv-endpoint "${RDZV_ENDPOINT:?multi-node runs need RDZV_ENDPOINT=host:port}" --rdzv-id "$RDZV_ID")
fi
# litegen.tools.torchrun is torchrun that passes pre-emption signals on to the trainer and keeps
# its requeue exit code (plain torchrun turns every worker failure into exit code 1).
exec "$PYTHON" -m litegen.tools.torchrun "${rdzv[@]}" --nproc-per-node "$NPROC_PER_NODE" \
  -m litegen.train "$@"
