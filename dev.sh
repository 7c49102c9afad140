#!/usr/bin/env bash
# Entry points for users and CI. Needs only python3 (>= 3.11) on Linux x86-64.
#   ./dev.sh demo    set up .venv, run the offline demo (whole DAG on synthetic data) + report
#   ./dev.sh test    set up .venv, lint (ruff, snakefmt, snakemake --lint), run the test suite
#   ./dev.sh test --fast   lint, then the tests not marked slow or slurm (minutes, 2 cores)
#   ./dev.sh setup   only create/refresh .venv from requirements.lock
#   ./dev.sh lock    regenerate requirements.lock from pyproject.toml (needs the registry)
#   ./dev.sh bench   the training-speed benchmark (benchmarks/bench_train.py; --tiny: a check)
#   ./dev.sh status  where a grid stands: runs per state, failures, time left (normdrop.status)
#   ./dev.sh gpu-check [--out DIR] [--device cpu] [--tiny] [--sections ...] [--budget-s S]
#                    GPU path right? how fast? (installs nothing; docs/gpu.md)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${NORMDROP_VENV:-.venv}
PY=$VENV/bin/python

setup() {
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "error: python3 >= 3.11 is needed (found $(python3 --version 2>&1))" >&2; exit 1; }
  [ -x "$PY" ] || python3 -m venv "$VENV"
  # Reinstall only when the pins change: a stamp named after the lock file's hash.
  stamp="$VENV/.installed-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "setting up $VENV from requirements.lock (first time: a few minutes, ~5 GB)"
    "$PY" -m pip install -q --disable-pip-version-check -r requirements.lock
    "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
    rm -f "$VENV"/.installed-* && touch "$stamp"
  fi
}

lint() {
  "$VENV/bin/ruff" check src tests benchmarks
  "$VENV/bin/ruff" format --check src tests benchmarks
  "$VENV/bin/snakefmt" --check Snakefile workflow/
  "$VENV/bin/snakemake" --lint --configfile workflow/demo.yaml >/dev/null
}

case "${1:-}" in
  setup) setup ;;
  demo)
    setup
    shift
    # Config files, --config values and --resources checked before Snakemake reads them (one
    # line naming the file and line, or the key); the extra arguments reach both calls below.
    results=$(PYTHONPATH=src "$PY" -m normdrop.workflow_config \
      --configfile workflow/demo.yaml "$@") || exit 2
    "$VENV/bin/snakemake" --cores all --configfile workflow/demo.yaml "$@"
    for arg in "$@"; do
      case "$arg" in
        -n | --dry-run | --dryrun | -[!-]*n*)
          echo "dry run: no report built"
          exit 0
          ;;
      esac
    done
    "$VENV/bin/snakemake" --cores 1 --configfile workflow/demo.yaml "$@" \
      --report "$results/report.html"
    echo "demo done: tables in $results/tables, figures in $results/figures," \
      "report in $results/report.html"
    ;;
  test)
    setup
    shift
    lint
    # One pytest worker per core (pytest-xdist): the tests run single-threaded (tests/conftest.py),
    # so 2 cores take about half the time. The SLURM tests share one group, run in turn on one
    # worker. `-n 0` after the command runs everything in one process.
    XDIST=(-n auto --dist loadgroup)
    if [ "${1:-}" = --fast ]; then
      # The developers' tier: no end-to-end workflow runs, no SLURM cluster. CI runs everything.
      shift
      exec "$PY" -m pytest "${XDIST[@]}" -m "not slow and not slurm" "$@"
    fi
    # The SLURM tests need a local single-node cluster; root can bring one up (see docs/slurm.md).
    if [ "$(id -u)" = 0 ] && [ -z "${NORMDROP_NO_SLURM:-}" ]; then
      bash tests/slurm/cluster.sh up
      trap 'bash tests/slurm/cluster.sh down' EXIT
      export NORMDROP_REQUIRE_SLURM=1 # a cluster that is up must not be skipped silently
    fi
    "$PY" -m pytest "${XDIST[@]}" "$@"
    ;;
  lock)
    tmp=$(mktemp -d)
    python3 -m venv "$tmp/venv"
    "$tmp/venv/bin/pip" install -q ".[dev]"
    { sed -n 1,2p requirements.lock; "$tmp/venv/bin/pip" freeze --exclude normdrop; } >requirements.lock.new
    mv requirements.lock.new requirements.lock
    rm -rf "$tmp"
    ;;
  bench)
    setup
    shift
    PYTHONPATH=src "$PY" benchmarks/bench_train.py "$@"
    ;;
  status)
    setup
    shift
    PYTHONPATH=src "$PY" -m normdrop.status "$@"
    ;;
  gpu-check)
    shift
    # Installs nothing: a GPU machine may come with its own CUDA build of torch (2.11 on) and no
    # package index. The .venv's python if there is one, else python3 (docs/gpu.md).
    py=python3
    [ -x "$PY" ] && py=$PY
    PYTHONPATH=src "$py" benchmarks/gpu_check.py "$@"
    ;;
  *)
    sed -n 2,11p "$0"
    exit 2
    ;;
esac
