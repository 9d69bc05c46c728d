#!/usr/bin/env bash
# Launch BYOL pretraining on this node (one process, one node of GPUs, or this node's share of a multi-node job).
#
#   scripts/pretrain.sh --preset tiny data_root=data/tiny                                  # one process (CPU ok)
#   GPUS=8 scripts/pretrain.sh --preset byol_resnet50_8xb32-accum16-coslr-200e_in1k data_root=data
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 GPUS=8 scripts/pretrain.sh --preset byol_resnet50_16xb256-coslr-200e_in1k
#
# Under SLURM, run it once per node (srun --ntasks-per-node=1): NNODES, NODE_RANK and MASTER_ADDR default to the
# job's SLURM_NNODES, SLURM_NODEID and first host. All arguments go to `python -m pretrain` (see --help there);
# docs/PRETRAIN.md has the full multi-node and sbatch examples.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
GPUS=${GPUS:-1}
NNODES=${NNODES:-${SLURM_NNODES:-1}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
if [[ -z "${MASTER_ADDR:-}" ]]; then
  if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  else
    MASTER_ADDR=localhost
  fi
fi
MASTER_PORT=${MASTER_PORT:-29500}

if [[ "$GPUS" -le 1 && "$NNODES" -le 1 ]]; then
  exec "$PY" -m pretrain "$@"
fi
exec "$PY" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m pretrain "$@"
