#!/usr/bin/env bash
# cnnlab's GPU path, proven in one go on one GPU (issue #26; docs/gpu.md):
#
#   scripts/gpu_check.sh              # on a GPU machine: ~8 min on one H100 (make gpu-check)
#   scripts/gpu_check.sh --dry-run    # anywhere: are the wheels there? which steps would run?
#   scripts/gpu_check.sh --wheels     # here, with network: download them (make gpu-wheels)
#   scripts/gpu_check.sh --only pytest,digits    # a rerun of some steps
#
# The steps, each under its own timeout and all under one budget (GPU_CHECK_BUDGET seconds,
# default 480): a step that would start with too little of the budget left is recorded as
# skipped, never half-run. After every step the report is rendered again, so whatever ran
# survives a kill: $OUT (the device tool's folder) or gpu_report/ gets
#   gpu_check.json, gpu_check.md   everything, rendered by scripts/gpu_report.py
#   gpu_check.log                  this script's whole console
#   pytest.xml, bench.json, digits_summary.json   the raw results
#
# What the machine lacks is installed from wheels in .gpu-wheels/ (ignored by git; the
# device machine has no network): each package of WHEELS below whose module does not
# import, with pip --no-index --no-deps. On a machine with `make install` done, nothing is.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEEL_DIR=${GPU_WHEELS:-$REPO/.gpu-wheels}
REPORT=${OUT:-$REPO/gpu_report}
BUDGET=${GPU_CHECK_BUDGET:-480}
MODELS="resnet18 alexnet mobilenet_v3 moganet_xtiny"  # resnet18 first: the issue's targets

# The one list of what the GPU machine may lack: pip name, the module that proves it is there.
# cnnlab's other dependencies (torch, torchvision, timm, tensorboard, scikit-learn, matplotlib,
# tqdm, pillow, numpy) are in the device image (/work/.library/device/KINDS.md); pytest and
# hypothesis are too, and travel anyway in case an image lacks them (installed only then).
WHEELS="hydra-core hydra
omegaconf omegaconf
antlr4-python3-runtime antlr4
PyYAML yaml
packaging packaging
pytest pytest
pluggy pluggy
iniconfig iniconfig
hypothesis hypothesis
sortedcontainers sortedcontainers
attrs attr"

die() { echo "error: $*" >&2; exit 2; }
# pip's "Location ... is ignored" lines (an index in pip's config without that package) are noise.
quiet_pip() { "$PY" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }; }

pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"
  elif [[ -x "$REPO/.venv/bin/python" ]]; then echo "$REPO/.venv/bin/python"
  else echo python3; fi
}
PY=$(pick_python)

# A wheel's file name starts with its normalised project name (PEP 427: - . -> _, any case).
wheel_file() {
  local norm
  norm=$(echo "$1" | tr 'A-Z.-' 'a-z__')
  find "$WHEEL_DIR" -maxdepth 1 -iname "${norm}-*.whl" 2>/dev/null | sort | tail -n 1
}

# ------------------------------------------------------------------ make gpu-wheels
download_wheels() {
  # The versions tested here (this machine's), for the device's CPython 3.12 on x86-64 Linux.
  mkdir -p "$WHEEL_DIR"
  local name module ver
  while read -r name module; do
    ver=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) \
      || die "$name is not installed in $PY: run make install first (its version is the one pinned)"
    if [[ -n $(wheel_file "$name") ]]; then echo "have $(basename "$(wheel_file "$name")")"; continue; fi
    if ! quiet_pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$WHEEL_DIR" "$name==$ver"; then
      # antlr4-python3-runtime 4.9.3 (omegaconf 2.3's pin) is on PyPI as an sdist only: build
      # its wheel here; it is pure Python (py3-none-any), so a wheel built on any CPython 3 fits.
      quiet_pip wheel --quiet --no-deps -w "$WHEEL_DIR" "$name==$ver" \
        || die "could not download or build a wheel of $name==$ver"
    fi
    echo "got  $(basename "$(wheel_file "$name")")"
  done <<<"$WHEELS"
  echo "$WHEEL_DIR: $(du -sh "$WHEEL_DIR" | cut -f1) in $(ls "$WHEEL_DIR"/*.whl | wc -l) wheels"
}

check_wheels() {
  local name module missing=()
  while read -r name module; do
    [[ -n $(wheel_file "$name") ]] || missing+=("$name")
  done <<<"$WHEELS"
  if (( ${#missing[@]} )); then
    die "$WHEEL_DIR lacks the wheels of ${missing[*]}: run make gpu-wheels (needs the network) first"
  fi
  echo "wheels: all $(wc -l <<<"$WHEELS") in $WHEEL_DIR ($(du -sh "$WHEEL_DIR" | cut -f1))"
}

# Installs the wheels whose module does not import. Into the interpreter's own environment
# (a bare, throw-away machine: the subprocesses the tests start then see them too); where that
# is read-only, into a folder on PYTHONPATH.
install_missing() {
  local name module files=()
  while read -r name module; do
    "$PY" -c "import $module" 2>/dev/null || files+=("$(wheel_file "$name")")
  done <<<"$WHEELS"
  if (( ${#files[@]} == 0 )); then echo "nothing to install: every module imports"; return 0; fi
  echo "installing ${#files[@]} wheels: ${files[*]##*/}"
  local pip=("$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir)
  "${pip[@]}" "${files[@]}" && return 0
  echo "the environment is not writable: installing into $WORK/site (run_step puts it on PYTHONPATH)"
  "${pip[@]}" --target "$WORK/site" "${files[@]}"
}

# ------------------------------------------------------------------ the steps
# One per line: name | timeout in seconds | command (bash, run in the repo root).
steps() {
  local bench="\$PY scripts/bench.py --device cuda --skip loader --steps 20 --rounds 2 --out-dir \$WORK/bench"
  cat <<EOF
env|60|\$PY scripts/gpu_report.py env --out \$WORK/env.json
wheels|90|install_missing
pytest|240|\$PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider --junitxml=\$REPORT/pytest.xml \$PYTEST_TIMEOUT
digits|120|run_digits
bench-fp32|75|$bench --models $MODELS --amp none
bench-bf16|60|$bench --models $MODELS --amp bf16
bench-bf16-cl|60|$bench --models $MODELS --amp bf16 --channels-last
bench-compile|120|$bench --models resnet18 --amp bf16 --channels-last --compile on
bench-compile-rest|150|$bench --models alexnet mobilenet_v3 moganet_xtiny --amp bf16 --channels-last --compile on
EOF
}

# The default experiment (AlexNet on the embedded digits, 5 epochs) on the GPU, timed from the
# command's start to its end: the time to its test accuracy, start-up and test pass included.
run_digits() {
  local dir="$WORK/digits" t0 rc
  mkdir -p "$dir"
  t0=$(date +%s.%N)
  (cd "$dir" && "$PY" -m cnnlab.run device=cuda trainer.progress=log); rc=$?
  local summary
  summary=$(find "$dir/outputs" -name summary.json | head -n 1)
  [[ -n "$summary" ]] && "$PY" - "$summary" "$t0" "$(date +%s.%N)" "$REPORT/digits_summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
s["command_wall_seconds"] = round(float(sys.argv[3]) - float(sys.argv[2]), 2)
json.dump(s, open(sys.argv[4], "w"), indent=1)
print(f"digits: test_acc {s.get('test_acc')} in {s['command_wall_seconds']} s (command wall)")
EOF
  return $rc
}

render() {
  "$PY" "$REPO/scripts/gpu_report.py" render --work "$WORK" --out "$REPORT" >/dev/null \
    || echo "warning: the report could not be rendered (see above)"
  [[ -f "$WORK/bench/benchmarks.json" ]] && cp "$WORK/bench/benchmarks.json" "$REPORT/bench.json"
  return 0
}

# Runs one step under its timeout and what is left of the budget; appends its record.
run_step() {
  local name=$1 limit=$2 cmd=$3 left t0 rc status
  left=$(( BUDGET - (SECONDS - START) ))
  (( left < limit )) && limit=$left
  if (( limit < 20 )); then
    status=skipped; rc=-1; echo "=== $name: skipped (${left}s of the ${BUDGET}s budget left)"
    echo "{\"name\": \"$name\", \"status\": \"$status\", \"rc\": null, \"seconds\": 0, \"limit\": $limit}" >>"$WORK/steps.jsonl"
    return
  fi
  echo "=== $name (timeout ${limit}s): $cmd"
  t0=$SECONDS
  timeout -k 5 "$limit" bash -c "$cmd"; rc=$?  # the functions it names are exported
  [[ $name == wheels && -d "$WORK/site" ]] && export PYTHONPATH="$WORK/site:$PYTHONPATH"
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  echo "=== $name: $status (exit $rc, $(( SECONDS - t0 ))s)"
  echo "{\"name\": \"$name\", \"status\": \"$status\", \"rc\": $rc, \"seconds\": $(( SECONDS - t0 )), \"limit\": $limit}" >>"$WORK/steps.jsonl"
  render
}

# ------------------------------------------------------------------ main
ONLY="" DRY=0
while (( $# )); do
  case $1 in
    --dry-run) DRY=1 ;;
    --wheels) download_wheels; exit $? ;;
    --only) shift; ONLY=${1:-} ;;
    --only=*) ONLY=${1#--only=} ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1: use --dry-run, --wheels, --only STEP[,STEP] or --help" ;;
  esac
  shift
done
known=$(steps | cut -d'|' -f1 | tr '\n' ' ')
for s in ${ONLY//,/ }; do [[ " $known" == *" $s "* ]] || die "--only $s: no such step; the steps are: $known"; done
selected() { [[ -z "$ONLY" || ",$ONLY," == *",$1,"* ]]; }

check_wheels
if (( DRY )); then
  echo "python: $PY; report: $REPORT; budget: ${BUDGET}s"
  echo "would install, of the wheels above, those whose module does not import on the GPU machine"
  echo "would run, in $REPO:"
  steps | while IFS='|' read -r name limit cmd; do
    selected "$name" && printf '  %-19s %4ss  %s\n' "$name" "$limit" "$cmd"
  done
  exit 0
fi

cd "$REPO" || exit 2
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$REPORT" "$WORK"
export PY WORK REPORT WHEEL_DIR WHEELS PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"  # shared by the steps: one compile per graph
export -f wheel_file install_missing run_digits
exec > >(tee -a "$REPORT/gpu_check.log") 2>&1
# pytest-timeout (in the device image) stops one hung test, not the whole step.
PYTEST_TIMEOUT=$("$PY" -c "import pytest_timeout" 2>/dev/null && echo "--timeout=150")
export PYTEST_TIMEOUT
"$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
  || die "no CUDA GPU here (torch.cuda.is_available() is False): scripts/gpu_check.sh --dry-run lists the steps"
START=$SECONDS
: >"$WORK/steps.jsonl"
echo "gpu-check: $(date -u '+%Y-%m-%d %H:%M UTC'), $PY, report in $REPORT, work in $WORK"
while IFS='|' read -r name limit cmd; do
  selected "$name" && run_step "$name" "$limit" "$cmd"
done < <(steps)
render
echo "gpu-check done in $(( SECONDS - START ))s: $REPORT/gpu_check.md"
cat "$REPORT/gpu_check.md" 2>/dev/null
