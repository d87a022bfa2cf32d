#!/usr/bin/env bash
# One device call for the GPU work (issues 7, 22): the GPU-marked tests, the kernel suite, the
# one-step latency suite and training steps, each fused and unfused in the same run, and which path
# wins per case (what fused=auto is to be set from). Results as JSON/PNG under $OUT (the device
# tool) or benchmarks/results. Budget: at most 9 minutes on an H100/H200 (time limits per step).
# Runs from the repository root with the image's python3 (torch, triton there); no install needed.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
out=${OUT:-benchmarks/results}
mkdir -p "$out"
tag="$($py -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "-"))')-$(date +%F)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/$tag-gpu.txt"
timeout 120 $py -m pytest -q -p no:cacheprovider -m gpu tests benchmarks --benchmark-json "$out/$tag-pytest-benchmark.json" \
    2>&1 | tee "$out/$tag-pytest.log" | tail -25
timeout 90 $py -m fastflow bench kernels --dtype fp16 --out "$out/$tag-kernels-fp16.json" 2>&1 | tail -60
timeout 60 $py -m fastflow bench kernels --dtype bf16 --ops attn --backward --out "$out/$tag-attention-bwd-bf16.json" \
    2>&1 | tail -30
timeout 150 $py -m fastflow bench latency --student-preset slim-15.7m --teacher-preset rf-ddpmpp --batch 1 --no-rk45 \
    --euler 1,4,16 --backends eager,fused,compiled,fused+compiled,cudagraph,fused+cudagraph \
    --out "$out/$tag-latency.json" --png "$out/$tag-latency.png" 2>&1 | tail -40
timeout 110 $py -m fastflow bench train --presets slim-15.7m,rf-ddpmpp --batch 32 --steps 10 \
    --out "$out/$tag-train.json" 2>&1 | tail -12
$py -m fastflow bench winners "$out/$tag-kernels-fp16.json" "$out/$tag-attention-bwd-bf16.json" \
    "$out/$tag-latency.json" "$out/$tag-train.json" --out "$out/$tag-winners.json" 2>&1 | tail -40
