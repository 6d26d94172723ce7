#!/usr/bin/env bash
# Installs the optional PyTorch reference (CPU) used by the numerical-fidelity tests
# into the active environment. timm 0.9.2 and segmentation-models-pytorch 0.3.3 pin
# each other's and torchvision's versions in ways pip cannot resolve next to the CPU
# torch, hence --no-deps. Tests that need the reference skip with a reason without it, or
# fail with SMD_REQUIRE_TORCH_REFERENCE=1 (as CI runs them);
# smd_jax/convert/reference.py explains the torchvision operator stand-ins.
# Exits non-zero when any install fails or the installed stack does not import.
set -euo pipefail
pip install "torch==2.13.0"
pip install --no-deps "timm==0.9.2" "segmentation-models-pytorch==0.3.3" "torchvision==0.28.0" \
    "efficientnet-pytorch==0.7.1" "pretrainedmodels==0.7.4"
pip install pyyaml huggingface_hub safetensors six munch
# pip can succeed and leave a stack that does not import (an ABI mismatch, a missing
# operator library): check the import the tests make.
python -c "from smd_jax.convert import reference; t, timm, smp = reference.import_reference(); \
print('PyTorch reference:', t.__version__, 'timm', timm.__version__, 'smp', smp.__version__)"
