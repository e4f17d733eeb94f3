#!/usr/bin/env bash
# GPU run in one command (< 8 min): build the CUDA extension, GPU tests, benchmarks, summary.
# Results go to $OUT if set, else benchmarks/results/<timestamp>/. See run_all.sh.
LOTTS_BENCH_MODE=gpu exec bash "$(dirname "${BASH_SOURCE[0]}")/run_all.sh"
