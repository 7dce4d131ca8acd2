#!/usr/bin/env bash
# Device runs on a 2-GPU machine (nvidia-h100-x2), results into $OUT. Phases:
#   gen   issue 4/5/9: d30 sweep grid over both GPUs, then GPU0: trace/sensitivity/maxbatch while
#         GPU1: training-step benchmarks
#   dist  issue 10: DDP d16 1 GPU vs 2 GPUs (same global batch), FSDP d30 batch 32/GPU; graph sweep and
#         a 1-GPU sweep subset on GPU0
#   next  what is still unmeasured (see the phase)
# Usage: VARBENCH_GIT_COMMIT=$(git rev-parse HEAD) bash scripts/x2_bench.sh gen|dist|next  (needs the nvidia-ml-py
#        wheel in .whl; results come back as $OUT/results.tgz)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=.:/tmp/site HF_HUB_OFFLINE=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "commit: ${VARBENCH_GIT_COMMIT:-unknown} (set by the caller; the copied .git may be stale)"
# Rows go to /tmp/o and are packed into $OUT/results.tgz after every step: one file comes back even when the call
# is cut at its time limit (the device returns at most 8 files, and nothing that was still unpacked).
O=/tmp/o; mkdir -p $O
pack() { tar czf $OUT/results.tgz.tmp -C $O . 2>/dev/null && mv $OUT/results.tgz.tmp $OUT/results.tgz; }
( while sleep 30; do pack; done ) & PACKER=$!; disown $PACKER      # also mid-step (a bare `wait` skips it)
B=scripts/h100_bench.py
case "$1" in
gen)
  timeout 250 python3 $B $O grid --devices 0,1 2>&1 | grep -v Warning | tail -5; pkill -f varbench.measuring.sweep_worker; sleep 1
  # one process per part: a part's cached CUDA memory must not shrink the next part's GPU
  ( export CUDA_VISIBLE_DEVICES=0
    for p in trace maxbatch; do timeout 150 python3 $B $O $p 2>&1 | grep -v Warning | tail -4; done ) &
  ( export CUDA_VISIBLE_DEVICES=1
    for a in "--model var-d16 --batch 64 --profile 40" "--model var-d16 --batch 64 --attn mask" \
             "--model var-d16 --batch 64 --compile"; do
      timeout 200 python3 scripts/bench_train.py $a --steps 8 --out $O/train.jsonl 2>&1 | grep -v Warning | tail -48
    done ) &
  wait; pack
  ;;
dist)
  if python3 -c "import typer, varbench.cli" 2>/dev/null; then
    run() { n=$1; o=$2; shift 2; timeout 150 torchrun --standalone --nproc-per-node $n -m varbench train "$@" --out $o > $o.log 2>&1; tail -3 $o.log | cut -c1-300; }
  else
    echo "typer CLI not importable here: scripts/train_lib.py (the same library call)"
    run() { n=$1; o=$2; shift 2; timeout 170 torchrun --standalone --nproc-per-node $n scripts/train_lib.py \
      "$(python3 -c 'import json,sys; a=sys.argv[1:]; d={}; i=0
while i<len(a):
    k=a[i][2:].replace("-","_")
    if k.startswith("no_"): d[k[3:]]=False; i+=1; continue
    if k in ("fsdp","grad_checkpoint"): d[k]=True; i+=1; continue
    v=a[i+1]; d[k]=int(v) if v.isdigit() else v; i+=2
print(json.dumps(d))' "$@" --out $o)" 2>&1 | tail -2; }
  fi
  T="--model var-d16 --batch 64 --max-steps 50 --log-every 1 --synthetic-size 6400 --val-size 0 --workers 6 --no-save-final --vae random"
  run 1 $O/ddp1 $T
  run 2 $O/ddp2 $T; pack
  F="--model var-d30 --batch 64 --max-steps 12 --log-every 1 --synthetic-size 1280 --val-size 0 --workers 6 --no-save-final --vae random --fsdp"
  # d30 batch 32/GPU: fp32 params + AdamW sharded over 2 GPUs (16 GB each); activations need checkpointing
  run 2 $O/fsdp $F --grad-checkpoint
  ls $O/ddp1 $O/ddp2 $O/fsdp
  # one-GPU runs after the distributed ones: the grid on GPU0 alone (concurrent eager workers share the host
  # CPU and slow the launch-bound points), VARiant-d2 graph replay (CPU-light) on GPU1
  ( CUDA_VISIBLE_DEVICES=0 timeout 270 python3 $B $O grid 2>&1 | grep -v Warning | tail -2 ) &
  ( CUDA_VISIBLE_DEVICES=1 timeout 120 python3 $B $O graphs_d2 2>&1 | grep -v Warning | tail -2 ) &
  wait; pack
  ;;
next)
  # what the 2026-11-25 session could not finish: 2-GPU DDP (start-up broadcast now skipped), the grid on one GPU,
  # VARiant-d2 graph replay and the largest batch with the chunked MLP. Timeouts sum to well under a call's limit.
  T="--model var-d16 --batch 64 --max-steps 30 --log-every 1 --synthetic-size 3200 --val-size 0 --workers 6 --no-save-final --vae random"
  timeout 120 torchrun --standalone --nproc-per-node 2 -m varbench train $T --out $O/ddp2 > $O/ddp2.log 2>&1; tail -2 $O/ddp2.log; pack
  ( CUDA_VISIBLE_DEVICES=0 timeout 240 python3 $B $O grid 2>&1 | grep -v Warning | tail -2 ) &
  ( export CUDA_VISIBLE_DEVICES=1
    timeout 100 python3 $B $O graphs_d2 2>&1 | grep -v Warning | tail -2
    timeout 130 python3 $B $O maxbatch 2>&1 | grep -v Warning | tail -2 ) &
  wait; pack
  ;;
esac
kill $PACKER 2>/dev/null; pack; ls -la $OUT
