#!/usr/bin/env bash
# One device call for the GPU work (issue 7): the GPU-marked tests, the kernel suite and the
# one-step latency suite, results as JSON/PNG under $OUT (the device tool) or benchmarks/results.
# Runs from the repository root with the image's python3 (torch, triton there); no install needed.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
out=${OUT:-benchmarks/results}
mkdir -p "$out"
tag="$($py -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "-"))')-$(date +%F)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/$tag-gpu.txt"
$py -m pytest -q -p no:cacheprovider -m gpu tests benchmarks --benchmark-json "$out/$tag-pytest-benchmark.json" \
    2>&1 | tee "$out/$tag-pytest.log" | tail -25
$py -m fastflow bench kernels --dtype fp16 --out "$out/$tag-kernels-fp16.json" 2>&1 | tail -60
$py -m fastflow bench kernels --dtype bf16 --ops attn --backward --out "$out/$tag-attention-bwd-bf16.json" 2>&1 | tail -30
$py -m fastflow bench latency --student-preset slim-15.7m --teacher-preset rf-ddpmpp --batch 1 \
    --backends eager,compiled,cudagraph --out "$out/$tag-latency.json" --png "$out/$tag-latency.png" 2>&1 | tail -30
