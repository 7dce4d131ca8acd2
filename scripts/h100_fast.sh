#!/usr/bin/env bash
# One device call (nvidia-h100-x1) for the issue-9 fast path: the A/B probe (eager default vs compiled, each eager
# and with CUDA graphs), the graphs+compile sweep (d30, VARiant-d2 x batch 1/16/64, decode included), and the
# largest batch. Results are packed into $OUT/results.tgz after every step.
# Usage: VARBENCH_GIT_COMMIT=$(git rev-parse HEAD) bash scripts/h100_fast.sh [first|second|third|diag|fourth|fifth|sixth|final]
set -u
export PYTHONPATH=. HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "commit: ${VARBENCH_GIT_COMMIT:-unknown}"
O=/tmp/o; mkdir -p $O
pack() { tar czf $OUT/results.tgz.tmp -C $O . 2>/dev/null && mv $OUT/results.tgz.tmp $OUT/results.tgz; }
( while sleep 20; do pack; done ) & PACKER=$!; disown $PACKER
if [ "${1:-first}" = first ]; then
  timeout 170 python3 scripts/speed_probe.py $O/probe --variants epi,epi+fuse --parts ceilings,timing,per_scale,profile \
    2>&1 | grep -v -i warn | grep -v '"part": "profile"' | tail -14; pack
  timeout 260 python3 scripts/h100_bench.py $O fast 2>&1 | grep -v -i warn | tail -3; pack
  timeout 130 python3 scripts/h100_bench.py $O maxbatch 2>&1 | grep -v -i warn | tail -2; pack
elif [ "$1" = diag ]; then   # session 4: where the graphed wall time goes (syncs, idle gaps), small-M GEMMs, GPU tests
  timeout 240 python3 scripts/speed_probe.py $O/probe --variants epi+fuse,epi+fuse+tokkv --parts timing,diag,gemm \
    2>&1 | grep -v -i warn | grep -v '"part": "gemm"' | tail -16; pack
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tail -15 | tee $O/gpu_tests.txt; pack
elif [ "$1" = fourth ]; then   # session 4: fused k/v cache writes + small attention vs the session-3 path; sweep
  timeout 270 python3 scripts/speed_probe.py $O/probe --variants epi+fuse,epi+fuse+tokkv,epi+fuse+tokkv+small \
    --parts timing,attn,diag 2>&1 | grep -v -i warn | grep -v '"part": "attn"' | tail -14; pack
  timeout 240 python3 scripts/h100_bench.py $O fast 2>&1 | grep -v -i warn | tail -3; pack
  timeout 70 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tail -3 | tee $O/gpu_tests.txt; pack
elif [ "$1" = fifth ]; then   # session 4: the Triton q/k-norm + cache-write kernel and the small-attention backend
  timeout 200 python3 scripts/speed_probe.py $O/probe --variants epi+fuse+tokkv,epi+fuse+tokkv+tri,epi+fuse+tokkv+tri+eff \
    --parts timing,diag 2>&1 | grep -v -i warn | tail -12; pack
  timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tail -3 | tee $O/gpu_tests.txt; pack
  timeout 230 python3 scripts/h100_bench.py $O fast 2>&1 | grep -v -i warn | tail -3; pack
  timeout 100 python3 scripts/h100_bench.py $O maxbatch_x 2>&1 | grep -v -i warn | tail -2; pack
elif [ "$1" = sixth ]; then   # session 4, last call: GPU tests, tiny-attention A/B, then the target sweep
  timeout 70 python3 -m pytest -q -rf -m gpu -p no:cacheprovider tests/ 2>&1 | tail -6 | tee $O/gpu_tests.txt; pack
  if grep -q "FAILED.*tiny_attention" $O/gpu_tests.txt; then export VARBENCH_NO_TINY_ATTN=1; fi
  timeout 150 python3 scripts/speed_probe.py $O/probe --variants epi+fuse+tokkv+tri+eff,epi+fuse+tokkv+tri+eff+tiny \
    --parts timing --graphs-only 2>&1 | grep -v -i warn | tail -6; pack
  python3 - <<'PY' >> $O/choice.txt
import json
t = {}
for l in open("/tmp/o/probe/probe.jsonl"):
    r = json.loads(l)
    if r["part"] == "timing" and r["graphs"]:
        t[(r["variant"].endswith("+tiny"), r["schedule"])] = r["ms_p50"]
slower = t.get((True, "d2"), 1e9) > t.get((False, "d2"), 0)
print("tiny attention", "OFF (slower or failed)" if slower else "on", t)
open("/tmp/o/tiny_off", "w").write("1" if slower else "0")
PY
  if [ "$(cat $O/tiny_off 2>/dev/null)" = 1 ]; then export VARBENCH_NO_TINY_ATTN=1; fi
  echo "VARBENCH_NO_TINY_ATTN=${VARBENCH_NO_TINY_ATTN:-0}" | tee -a $O/choice.txt
  timeout 200 python3 scripts/h100_bench.py $O fast_targets 2>&1 | grep -v -i warn | tail -2; pack
elif [ "$1" = final ]; then   # session 4, after the split-head fix: GPU tests (isolating the tiny kernel if the
  # greedy-agreement test fails), then the target sweep
  timeout 70 python3 -m pytest -q -rf -m gpu -p no:cacheprovider tests/ 2>&1 | tail -5 | tee $O/gpu_tests.txt; pack
  if grep -q "FAILED.*greedy" $O/gpu_tests.txt; then
    VARBENCH_NO_TINY_ATTN=1 timeout 40 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_fast_path.py \
      -k greedy 2>&1 | tail -1 | tee $O/gpu_tests_no_tiny.txt
    grep -q " passed" $O/gpu_tests_no_tiny.txt && ! grep -q failed $O/gpu_tests_no_tiny.txt && export VARBENCH_NO_TINY_ATTN=1
  fi
  if grep -q "FAILED.*tiny_attention" $O/gpu_tests.txt; then export VARBENCH_NO_TINY_ATTN=1; fi
  echo "VARBENCH_NO_TINY_ATTN=${VARBENCH_NO_TINY_ATTN:-0}" | tee $O/choice.txt
  timeout 170 python3 scripts/h100_bench.py $O fast_targets 2>&1 | grep -v -i warn | tail -1; pack
elif [ "$1" = third ]; then   # the next session: the token-major KV cache against the default, same process
  timeout 200 python3 scripts/speed_probe.py $O/probe --variants epi+fuse,epi+fuse+tokkv --parts timing,per_scale,profile \
    2>&1 | grep -v -i warn | grep -v '"part": "profile"' | tail -14; pack
else   # "second": after the q/k-norm input change, the same measurements and the largest batch again
  timeout 110 python3 scripts/speed_probe.py $O/probe --variants epi+fuse --parts timing,per_scale,profile \
    2>&1 | grep -v -i warn | grep -v '"part": "profile"' | tail -8; pack
  timeout 230 python3 scripts/h100_bench.py $O fast 2>&1 | grep -v -i warn | tail -3; pack
  timeout 110 python3 scripts/h100_bench.py $O maxbatch_x 2>&1 | grep -v -i warn | tail -2; pack
  timeout 80 python3 scripts/h100_bench.py $O fast_eager 2>&1 | grep -v -i warn | tail -2; pack
fi
kill $PACKER 2>/dev/null; pack
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob("/tmp/o/*/sweep.jsonl")):
    for l in open(f):
        r = json.loads(l)
        print(f.split("/")[-2], r["depth"], r["batch"], r["status"], r.get("latency_ms_p50") and round(r["latency_ms_p50"], 1),
              r.get("decode_ms_p50") and round(r["decode_ms_p50"], 1),
              r.get("peak_allocated_bytes") and round(r["peak_allocated_bytes"] / 2**20))
PY
