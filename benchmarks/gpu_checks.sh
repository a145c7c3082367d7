#!/usr/bin/env bash
# Issue 8's GPU checks as one command, for a GPU machine whose python3 has torch, torchdiffeq,
# hypothesis, xarray and pytest (the device image does; ctep itself runs from the checkout).
#
#   bash benchmarks/gpu_checks.sh OUTDIR        # from the repository root
#
# 1. tests/test_gpu.py: relaxation (every loop method, dopri5), the registry models, three
#    estimators and a short training run on the GPU against the CPU, and CUDA's sync debug mode
#    counting synchronisations between residual checks;
# 2. benchmarks/epoch_time.py: seconds per epoch of the VGG5 CIFAR-10 config (synthetic
#    CIFAR-shaped images: the timing does not depend on the pixels with fixed budgets) and of the
#    MNIST 784-512-10 config, median of 5 rounds of 20 batches after 5 warm-up batches, host
#    clock and CUDA events, peak memory. The JSON line comes at the end; each round's time is
#    written to the .log next to it as it ends, so a run stopped by its time limit keeps them.
# Each step has its own time limit, so the whole script ends within about 8 minutes.
set -u -o pipefail
out=${1:-gpu_checks_out}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/machine.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/test_gpu.log"
timeout 150 python3 benchmarks/epoch_time.py --config examples/configs/vgg5_cifar10.toml \
    --device cuda --synthetic 50000 --warmup 5 --batches 20 --rounds 5 --json \
    2> "$out/epoch_vgg5_cifar10.log" | tee "$out/epoch_vgg5_cifar10.json"
timeout 60 python3 benchmarks/epoch_time.py \
    --config examples/configs/mnist_784-512-10_laborieux.toml \
    --device cuda --synthetic 60000 --warmup 5 --batches 20 --rounds 5 --json \
    2> "$out/epoch_mnist_784-512-10.log" | tee "$out/epoch_mnist_784-512-10.json"
