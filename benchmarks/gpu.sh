#!/usr/bin/env bash
# The GPU checks of the "a round costs its training" work, as one script of under 10 minutes on one
# GPU (an H100 or H200 with 16 CPUs). Run from the repository root with fedsim installed:
#     bash benchmarks/gpu.sh [python]
# It prints, in order: the CUDA tests; the vectorized engine alone (clients per second, GPU busy);
# a whole vectorized round against its training alone (ratio, machinery per client, GPU busy of a
# whole in-process run); stock Flower against fedsim on LeNet-5 1000 x 50 (100 per round) and on
# ResNet-8 100 x 500 (20 per round, batch 32). Targets: a round within 1.5x of its training alone,
# at least 10x stock Flower on both workloads, the GPU busy at least 60% of round time.
set -u
PY=${1:-python}
export FLWR_TELEMETRY_ENABLED=0
step() { echo; echo "== $* ($(date +%T))"; }
step "CUDA tests"
timeout 120 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests || echo "CUDA tests failed (rc=$?)"
step "engine alone: LeNet-5, ResNet-8, 100 clients"
timeout 120 "$PY" benchmarks/vectorized.py --device cuda --models lenet5,resnet8 --cohorts 100 --repetitions 2
step "a vectorized round against its training alone (LeNet-5, 1000 x 50, 100 per round)"
timeout 150 "$PY" benchmarks/vectorized.py round --device cuda --models lenet5 --clients 1000 --per-round 100 \
    --rounds 4 --repetitions 1
step "stock Flower vs fedsim, LeNet-5 1000 x 50, 100 per round, batch 10"
timeout 120 "$PY" benchmarks/overhead.py --device cuda --gpus-per-client 0.1 --clients 1000 --per-round 100 \
    --batch-size 10 --rounds 4 --repetitions 1 --engine vectorized --executors stock,cohort,in-process
step "stock Flower vs fedsim, ResNet-8 100 x 500, 20 per round, batch 32"
timeout 120 "$PY" benchmarks/overhead.py --device cuda --gpus-per-client 0.1 --model resnet8 --clients 100 \
    --samples 500 --per-round 20 --batch-size 32 --rounds 4 --repetitions 1 --engine vectorized --executors stock,cohort,in-process
