#!/usr/bin/env bash
# CPU run (about 2 min): reduced-shape benchmarks and summary. See run_all.sh.
LOTTS_BENCH_MODE=cpu exec bash "$(dirname "${BASH_SOURCE[0]}")/run_all.sh"
