#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md in one command (about 8 minutes on one H100):
#   1. googlenet bench --device cuda --json: bf16 training step and inference at batch 256
#      (224 px), batch-1 latency; ours vs torchvision's best in one process.
#   2. Fashion-MNIST time-to-accuracy: 3 seeds of `googlenet train --recipe fmnist`, timed
#      from process start to the printed test accuracy.
# Then a short table, printed last. Everything is tee'd to $OUT/log when $OUT is set.
#
# Environment: PYTHON (default .venv/bin/python, else python3), OUT (results folder),
# FMNIST_DATA (folder with the four Fashion-MNIST idx .gz files; default: the system copy,
# else ./data/fashion-mnist, else shared/fashion-mnist), SEEDS (default "0 1 2"),
# SKIP_BENCH=1 / SKIP_FMNIST=1 to run one half, TORCHINDUCTOR_CACHE_DIR (compile cache),
# PAPER_BUDGET (e.g. 5m: also train the no-BN paper `googlenet` with the paper recipe on
# Fashion-MNIST at 96 px for that long and keep its curve; off by default to stay in ~8 min).
# For a dry run of the script's plumbing on a CPU: DEVICE=cpu with BENCH_ARGS / TRAIN_ARGS
# (extra flags, e.g. tiny sizes and --limit-train) -- those figures mean nothing.
# Exit codes: 0 done (or no CUDA GPU: a message, nothing measured), 1 a step failed.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
RESULTS=${OUT:-runs/gpu-bench}
mkdir -p "$RESULTS"
LOG="$RESULTS/log"
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/.cache/inductor}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
SEEDS=${SEEDS:-"0 1 2"}
DEVICE=${DEVICE:-cuda}
BENCH_ARGS=${BENCH_ARGS:-}
TRAIN_ARGS=${TRAIN_ARGS:-}

main() {
echo "== bench/gpu.sh  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
if [[ "$DEVICE" == cuda ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"; then
  echo "bench/gpu.sh: no CUDA GPU visible (torch.cuda.is_available() is False): nothing measured."
  echo "Run it on a machine with an NVIDIA GPU; for CPU figures use: googlenet bench --device cpu"
  return 0
fi
[[ "$DEVICE" == cuda ]] && { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; }
"$PYTHON" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

status=0
if [[ "${SKIP_BENCH:-0}" != 1 ]]; then
  echo "== googlenet bench --device $DEVICE --json $BENCH_ARGS"
  start=$(date +%s)
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
  if "$PYTHON" -m googlenet bench --device "$DEVICE" --json $BENCH_ARGS > "$RESULTS/bench.json"; then
    echo "bench: $(( $(date +%s) - start )) s"
  else
    echo "bench: FAILED (see the log above)"; status=1
  fi
fi

if [[ "${SKIP_FMNIST:-0}" != 1 ]]; then
  data=${FMNIST_DATA:-}
  for d in /usr/share/datasets/fashion-mnist data/fashion-mnist shared/fashion-mnist; do
    [[ -z "$data" && -f "$d/t10k-labels-idx1-ubyte.gz" ]] && data=$d
  done
  if [[ -z "$data" ]]; then
    echo "fmnist: no Fashion-MNIST idx .gz files found; set FMNIST_DATA=DIR (skipped)"
  else
    echo "== Fashion-MNIST time-to-accuracy (recipe fmnist, data $data, seeds $SEEDS)"
    for seed in $SEEDS; do
      # Timed from process start to the printed accuracy line (data loading, compilation included).
      "$PYTHON" - "$seed" "$data" "$RESULTS" "$DEVICE" $TRAIN_ARGS <<'PY' || status=1
import json, re, subprocess, sys, time
seed, data, results, device = sys.argv[1:5]
cmd = [sys.executable, "-m", "googlenet", "train", "--recipe", "fmnist", "--dataset", "fashion-mnist",
       "--data", data, "--device", device, "--seed", seed, "--out", f"{results}/fmnist-seed{seed}",
       *sys.argv[5:]]
print("$", " ".join(cmd), flush=True)
start = time.perf_counter()
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
found = None
for line in proc.stdout:
    print(line, end="", flush=True)
    m = re.search(r"test accuracy: top-1 ([0-9.]+)%", line)
    if m and found is None:
        found = {"seed": int(seed), "top1": float(m.group(1)), "seconds": round(time.perf_counter() - start, 2)}
code = proc.wait()
if found is None or code != 0:
    print(f"fmnist seed {seed}: no accuracy line (exit code {code})", flush=True)
    sys.exit(1)
with open(f"{results}/fmnist-seed{seed}.json", "w") as f:
    json.dump(found, f)
print(f"fmnist seed {seed}: {found['top1']:.2f}% in {found['seconds']:.1f} s", flush=True)
PY
    done
  fi
fi

if [[ -n "${PAPER_BUDGET:-}" ]]; then
  echo "== paper recipe, no-BN googlenet, Fashion-MNIST at 96 px, budget $PAPER_BUDGET"
  # shellcheck disable=SC2086
  "$PYTHON" -m googlenet train --recipe paper --dataset fashion-mnist --input-size 96 --budget "$PAPER_BUDGET" \
    --device "$DEVICE" --out "$RESULTS/paper-fmnist" $TRAIN_ARGS || status=1
  cat "$RESULTS/paper-fmnist/metrics.csv" 2>/dev/null
fi

echo "== summary"
"$PYTHON" - "$RESULTS" <<'PY'
import glob, json, os, statistics, sys
results = sys.argv[1]
path = os.path.join(results, "bench.json")
if os.path.exists(path):
    report = json.load(open(path))
    print(f"{report['machine']}; torch {report['torch']}, torchvision {report['torchvision']}")
    print(f"{'case':<28} {'batch':>5} {'prec':>5} {'ours':>10} {'torchvision':>12} {'unit':>6} {'speedup':>8}")
    for r in report["rows"]:
        print(f"{r['case']:<28} {r['batch']:>5} {r['precision']:>5} {r['ours']:>10.4g} {r['torchvision']:>12.4g} "
              f"{r['unit']:>6} {r['speedup']:>7.2f}x  (reference: {r['torchvision_path']})")
else:
    print("bench: no results")
runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(results, "fmnist-seed*.json")))]
if runs:
    acc = [r["top1"] for r in runs]
    sec = [r["seconds"] for r in runs]
    print(f"Fashion-MNIST fmnist recipe, {len(runs)} seeds: top-1 " + ", ".join(f"{a:.2f}" for a in acc)
          + f" (mean {statistics.mean(acc):.2f}%); seconds to printed accuracy "
          + ", ".join(f"{s:.1f}" for s in sec) + f" (mean {statistics.mean(sec):.1f})")
else:
    print("Fashion-MNIST: no results")
PY
return $status
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
