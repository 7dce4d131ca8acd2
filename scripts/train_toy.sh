#!/usr/bin/env bash
# Trains the shipped toy model with varbench's own trainer (run on the GPU machine; seeds fixed, re-runnable):
#   1. the toy multi-scale VQ-VAE on the procedural set;
#   2. the var-toy supernet with the `progressive` strategy (the shipped model) and, at equal steps, the paper's
#      ablations: fixed p=0.1, fixed p=1.0 (and sandwich with SANDWICH=1; 3 passes a step) -> results/toy/.
# Workers 0: the procedural set renders in-process (DataLoader workers hung under 4 parallel CUDA runs).
# Usage: scripts/train_toy.sh [RUN_DIR] [vqvae|var|all]   (defaults: runs/toy all; needs a CUDA GPU)
# Then: PYTHONPATH=. python3 scripts/export_toy.py RUN_DIR ships RUN_DIR/progressive as model/weights/var-toy/,
#       PYTHONPATH=. python3 scripts/eval_toy_ablation.py RUN_DIR OUT.jsonl --samples 500 scores the strategies.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; fi
RUN=${1:-runs/toy}
WHAT=${2:-all}
case $WHAT in vqvae|var|all) ;; *) echo "train_toy.sh: second argument must be vqvae, var or all, got '$WHAT'" >&2; exit 2;; esac
export PYTHONPATH=${PYTHONPATH:-.}
VB="python3 -m varbench train --model var-toy --data synthetic --device cuda --seed 0"
N=50000          # procedural training images (rendered from the seed)
EPOCHS=8         # progressive: 2 at p=0.2, 4 ramping to 1.0, 2 at 1.0 (the paper's 5/15/5-15 shape, shortened)
BATCH=256
if [[ $WHAT == vqvae || $WHAT == all ]]; then
  $VB --stage vqvae --synthetic-size $N --batch 128 --max-steps 3000 --lr 3e-4 --workers 6 --log-every 50 --out "$RUN/vqvae"
fi
if [[ $WHAT == var || $WHAT == all ]]; then
  COMMON="--init random --vae $RUN/vqvae/vae.safetensors --synthetic-size $N --epochs $EPOCHS --batch $BATCH \
          --lr 1e-3 --depths 2,4,6 --switch 4 --workers 0 --val-size 1000 --val-every 500 --log-every 50 --save-every 300"
  $VB $COMMON --strategy progressive --e1 2 --e2 4 --e3 2 --out "$RUN/progressive" &
  $VB $COMMON --strategy fixed --subnet-p 0.1 --out "$RUN/fixed-p0.1" &
  $VB $COMMON --strategy fixed --subnet-p 1.0 --out "$RUN/fixed-p1.0" &
  if [[ ${SANDWICH:-0} == 1 ]]; then $VB $COMMON --strategy sandwich --out "$RUN/sandwich" & fi
  wait
fi
