"""The PyTorch reference side: smp 0.3.3 / timm 0.9.2 models, eager PyTorch.

The same work as our steps (smd_jax/training/steps.py) at the same batch, input size and
precision: uint8 -> ImageNet-normalised float input, model, masked L1 on the sigmoid
depth (+ 0.07 x cross-entropy over labelled pixels for the 2-head model), Adam
update; eval is the forward pass in eval mode (running BatchNorm statistics) under
`torch.inference_mode`.

On a GPU the fair setting is PyTorch's own fast path: channels_last tensors and
autocast (bf16 for --precision bf16, the counterpart of our bf16 compute). On the
CPU both are options (`channels_last` None: on for CUDA only).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import numpy as np

from smd_jax.convert import fidelity, reference

SMP_ENCODERS = fidelity.SMP_ENCODERS
SEMANTIC_WEIGHT = 0.07
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def build_model(torch, smp, model: str, encoder: str):
  """model name -> torch module whose forward returns {task: NCHW logits}."""
  if model in ("unet", "deeplabv3"):
    cls = {"unet": smp.Unet, "deeplabv3": smp.DeepLabV3}[model]
    net = cls(SMP_ENCODERS[encoder], encoder_weights=None, classes=1)
    return _Tasks(torch, net, lambda m, x: {"depth": m(x)})
  if model == "unet_2head":  # the semantic_md 2-head layout, from smp parts
    net = fidelity.semantic_md_multitask(torch, smp, encoder, {"depth": 1, "semantic": 40})
    return _Tasks(torch, net, lambda m, x: m(x)[1])
  raise ValueError(f"Unknown model {model!r}")


def _Tasks(torch, net, forward):  # pylint: disable=invalid-name

  class Tasks(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.net = net

    def forward(self, x):
      return forward(self.net, x)

  return Tasks()


def reference_loss(torch, outputs, depth, label):
  """Masked L1 between sigmoid(depth logits) and depth/15 (clamped to 15 m) over
  finite positive depths, + 0.07 x cross-entropy over labelled pixels (class = label
  - 1) when there is a semantic head: the objective of our 1- and 2-head configs."""
  valid = torch.isfinite(depth) & (depth > 0)
  target = torch.nan_to_num(depth.clamp(0.0, 15.0) / 15.0)
  pred = torch.sigmoid(outputs["depth"].float()[:, 0])
  loss = (pred - target).abs()[valid].mean()
  if "semantic" in outputs:
    target_class = torch.where((label >= 1) & (label <= 40), label - 1, -100)
    loss = loss + SEMANTIC_WEIGHT * torch.nn.functional.cross_entropy(
        outputs["semantic"].float(), target_class, ignore_index=-100)
  return loss


def device_name(torch) -> str:
  return "cuda" if torch.cuda.is_available() else "cpu"


def prepare(model: str, *, encoder: str = "efficientnet_b4", batch_size: int, size: int,
            precision: str, train: bool = True, evaluate: bool = True,
            channels_last: bool | None = None, batch: dict[str, np.ndarray]
            ) -> tuple[dict, dict[str, Callable[[], object]]]:
  """The reference model on `batch` (numpy, as `flax_side.random_batch` makes it), on
  CUDA when available, as `flax_side.prepare` builds ours: (the row so far, with each
  step's first run timed; {"train" / "eval": a function that runs one step})."""
  torch, _, smp = reference.import_reference()
  dev = device_name(torch)
  if channels_last is None:
    channels_last = dev == "cuda"
  torch.manual_seed(0)
  start = time.perf_counter()
  net = build_model(torch, smp, model, encoder).to(dev)
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  net = net.to(memory_format=memory_format)
  build_s = time.perf_counter() - start
  image = torch.from_numpy(batch["image"]).to(dev).permute(0, 3, 1, 2)  # NCHW view
  depth = torch.from_numpy(batch["depth"]).to(dev)
  label = torch.from_numpy(batch["semantic"].astype(np.int64)).to(dev)
  mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1)
  std = torch.tensor(STD, device=dev).view(1, 3, 1, 1)
  autocast = (lambda: torch.autocast(dev, dtype=torch.bfloat16)) if precision == "bf16" else (
      contextlib.nullcontext)
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

  def inputs():
    x = (image.float() / 255.0 - mean) / std
    return x.contiguous(memory_format=memory_format)

  def loss_fn(outputs):
    return reference_loss(torch, outputs, depth, label)

  result = {"side": "torch", "model": model, "encoder": encoder, "batch_size": batch_size,
            "size": size, "precision": precision, "model_build_s": build_s,
            "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
            "backend": dev, "channels_last": channels_last, "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in net.parameters())}
  runs = {}
  if train:
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def run_train():
      if not net.training:  # after an eval step
        net.train()
      optimizer.zero_grad(set_to_none=True)
      with autocast():
        outputs = net(inputs())
      loss = loss_fn(outputs)
      loss.backward()
      optimizer.step()
      loss.item()  # a host read, as our loop reads metrics
      sync()

    start = time.perf_counter()
    run_train()  # first step: allocations, cuDNN autotuning (the 'compile' column)
    result["train_compile_s"] = time.perf_counter() - start
    runs["train"] = run_train
  if evaluate:

    def run_eval():
      if net.training:
        net.eval()
      with torch.inference_mode(), autocast():
        outputs = net(inputs())
        torch.sigmoid(outputs["depth"].float())
      sync()

    start = time.perf_counter()
    run_eval()
    result["eval_compile_s"] = time.perf_counter() - start
    runs["eval"] = run_eval
  return result, runs
