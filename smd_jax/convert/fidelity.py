"""Numerical fidelity: our Flax models against the PyTorch originals, same weights.

Each ``*_fidelity`` function builds a PyTorch reference (timm 0.9.2 / smp 0.3.3
layouts, random weights), gives it non-trivial BatchNorm parameters and statistics
(`calibrate_batch_norm`), converts its state dict with this package's converters,
and runs both models on the same random inputs:

* eval mode (running statistics) on every input shape: the largest absolute
  difference over every encoder feature map and over every output;
* train mode, one forward pass at ``train_shape``: features and outputs (batch
  statistics), and the running mean / variance each BatchNorm holds after the pass
  (PyTorch momentum 0.1, unbiased running variance, as ours). Dropout and drop path
  are switched off on both sides (their random masks cannot agree);
* trainable parameter counts of both (BatchNorm statistics excluded).

Needs the torch extra (`reference.import_reference`). The tests in
``tests/test_convert_fidelity.py`` assert on these numbers and ``benchmarks/fidelity.py``
tabulates them (``docs/fidelity.md``).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from smd_jax.convert import converters, io, names
from smd_jax.convert.core import Converted, convert_state_dict, model_variables
from smd_jax.convert.reference import import_reference
from smd_jax.models.model import DenseModel

SHAPES = ((2, 64, 64), (2, 64, 96))  # (batch, height, width): a square and a wide input
# Calibration batch (large enough for the stride-32 statistics to be stable) and the
# perturbation of the calibrated running statistics.
CALIBRATION_SHAPE = (8, 128, 128)
MEAN_NOISE = 0.1
VAR_FACTOR = (0.8, 1.25)
VAR_FLOOR = 0.1
SMP_ENCODERS = {"efficientnet_b2": "tu-efficientnet_b2", "efficientnet_b3": "tu-efficientnet_b3",
                "efficientnet_b4": "tu-efficientnet_b4", "resnet50": "resnet50"}


@dataclasses.dataclass
class Result:
  """Largest absolute differences (ours - reference) and parameter counts of one model."""

  name: str
  reference: str
  params: int
  reference_params: int
  eval_features: float  # over every feature map and input shape
  eval_outputs: float  # over every output (task) and input shape; 0 for encoders
  train_features: float
  train_outputs: float
  train_stats: float  # running mean / var after the train-mode pass, `_relative_diff`
  feature_scale: float  # largest |reference feature| (eval), for scale
  output_scale: float  # largest |reference output| (eval); 0 for encoders
  # Distances from the exact result (PyTorch in float64 on the same input), over the
  # features and outputs: PyTorch's float32 result and ours.
  reference_eval_error: float
  reference_train_error: float
  exact_eval_error: float
  exact_train_error: float
  shapes: tuple
  train_shape: tuple
  seconds: float = 0.0

  @property
  def worst(self) -> float:
    return max(self.eval_features, self.eval_outputs, self.train_features,
               self.train_outputs, self.train_stats)


def _max_diff(got, want) -> float:
  return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))


def _relative_diff(got, want) -> float:
  """max |got - want| / max(1, |want|): absolute below 1, relative above (running
  variances of deep layers reach ~1e2)."""
  want = np.asarray(want, np.float64)
  return float(np.max(np.abs(np.asarray(got, np.float64) - want) / np.maximum(1.0, np.abs(want))))


def _nchw(torch, x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _inputs(shape: Sequence[int], channels: int, seed: int) -> np.ndarray:
  batch, height, width = shape
  return np.random.default_rng(seed).normal(size=(batch, height, width, channels)).astype(
      np.float32)


def _numpy_state_dict(module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def calibrate_batch_norm(torch, module, forward: Callable, x: np.ndarray) -> None:
  """Random BatchNorm affine parameters, then running statistics that fit the data.

  Running statistics drawn blindly (e.g. variance U(0.5, 2)) let activations grow
  layer after layer (ResNet features ~1e2), where float32 rounding alone exceeds
  1e-4. Here one train-mode pass over ``x`` with ``momentum=None`` (a cumulative
  average: after one batch, exactly the batch statistics) sets them, and each is then
  perturbed (mean + 0.1 std N(0, 1), variance x U(0.8, 1.25)) so eval mode differs
  from train mode. ``VAR_FLOOR`` is added to every variance: channels that are almost
  constant on ``x`` (ReLU-dead ones) would otherwise be divided by ~sqrt(eps), which
  amplifies float32 rounding a hundredfold in PyTorch and here alike. Uses torch's
  global RNG.
  """
  bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
  with torch.no_grad():
    for bn in bns:
      bn.weight.uniform_(0.5, 1.5)
      bn.bias.uniform_(-0.2, 0.2)
      bn.reset_running_stats()
      bn.momentum = None
    module.train()
    forward(module, _nchw(torch, x))
    for bn in bns:
      bn.momentum = 0.1
      bn.running_mean.add_(MEAN_NOISE * bn.running_var.sqrt() * torch.randn_like(bn.running_mean))
      bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(*VAR_FACTOR))
      bn.running_var.add_(VAR_FLOOR)
  module.eval()


def _torch_train_mode(torch, module) -> None:
  module.train()
  for m in module.modules():  # deterministic: dropout / drop path off
    if isinstance(m, torch.nn.modules.dropout._DropoutNd) or type(m).__name__ in (
        "DropPath", "StochasticDepth"):
      m.eval()


def _flax_train_mode(model: nnx.Module) -> None:
  model.train()
  for _, m in nnx.iter_modules(model):
    if isinstance(m, nnx.Dropout):
      m.deterministic = True


def _jit_forward(model: nnx.Module):
  """x -> (features, {task: output}, BatchStats after the pass), jitted."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, x):
    m = nnx.merge(graphdef, state, copy=True)
    if isinstance(m, DenseModel):
      features = m.encoder(m.encoder_inputs(x))
      outputs = {t: m.heads[t](m.decoders[t](features)) for t in m.tasks}
    else:
      features, outputs = m(x), {}
    return features, outputs, nnx.state(m, nnx.BatchStat)

  return lambda x: run(state, x)


def _num_params(module: nnx.Module) -> int:
  return sum(int(np.prod(v.get_value().shape)) for p, v in model_variables(module).items()
             if p[-1] not in ("mean", "var"))


def _torch_run(torch, reference, forward: Callable, x: np.ndarray, dtype):
  """(features, {task: output}) of one PyTorch pass, as NHWC float64 numpy."""
  with torch.no_grad():
    features, outputs = forward(reference, _nchw(torch, x).to(dtype))
  return ([_nhwc(f).astype(np.float64) for f in features],
          {t: _nhwc(o).astype(np.float64) for t, o in outputs.items()})


def _diffs(name, got, want) -> tuple[float, float]:
  """Largest |got - want| over the features and over the outputs."""
  (features, outputs), (want_features, want_outputs) = got, want
  if len(features) != len(want_features):
    raise AssertionError(f"{name}: {len(features)} features vs {len(want_features)}")
  if set(outputs) != set(want_outputs):
    raise AssertionError(f"{name}: outputs {sorted(outputs)} vs {sorted(want_outputs)}")
  return (max(_max_diff(f, w) for f, w in zip(features, want_features)),
          max([_max_diff(outputs[t], w) for t, w in want_outputs.items()], default=0.0))


def measure(name: str, reference_name: str, torch, reference, torch_forward: Callable,
            model: nnx.Module, convert: Callable[[Mapping[str, np.ndarray]], Converted], *,
            shapes: Sequence[Sequence[int]] = SHAPES, train_shape: Sequence[int] | None = None,
            in_channels: int = 3, seed: int = 0, reference_params: int | None = None) -> Result:
  """Compares ``model`` (weights already converted from ``reference``) with it.

  ``torch_forward(reference, x_nchw) -> (features, {task: output})`` in one pass;
  ``convert(state dict) -> Converted`` in ``model``'s paths (for the statistics after
  the train-mode pass). A float64 copy of the reference gives the exact result on the
  same inputs; ``reference_*_error`` is how far PyTorch's float32 result is from it
  (the rounding noise any float32 implementation has), ``exact_*_error`` how far ours
  is.
  """
  start = time.time()
  train_shape = tuple(train_shape or shapes[-1])
  reference_params = (reference_params if reference_params is not None
                      else sum(p.numel() for p in reference.parameters()))
  exact = copy.deepcopy(reference).double()
  out = dict(eval_features=0.0, eval_outputs=0.0, reference_eval_error=0.0,
             exact_eval_error=0.0, feature_scale=0.0, output_scale=0.0)

  for module in (reference, exact):
    module.eval()
  model.eval()
  forward = _jit_forward(model)
  for i, shape in enumerate(shapes):
    x = _inputs(shape, in_channels, seed + 1 + i)
    want = _torch_run(torch, reference, torch_forward, x, torch.float32)
    truth = _torch_run(torch, exact, torch_forward, x, torch.float64)
    features, outputs, _ = forward(x)
    feature_diff, output_diff = _diffs(name, (features, outputs), want)
    out["eval_features"] = max(out["eval_features"], feature_diff)
    out["eval_outputs"] = max(out["eval_outputs"], output_diff)
    out["reference_eval_error"] = max(out["reference_eval_error"], *_diffs(name, want, truth))
    out["exact_eval_error"] = max(out["exact_eval_error"],
                                  *_diffs(name, (features, outputs), truth))
    out["feature_scale"] = max([out["feature_scale"]] + [np.max(np.abs(f)) for f in want[0]])
    out["output_scale"] = max([out["output_scale"]] + [np.max(np.abs(o))
                                                       for o in want[1].values()])

  for module in (reference, exact):
    _torch_train_mode(torch, module)
  _flax_train_mode(model)
  x = _inputs(train_shape, in_channels, seed + 100)
  want = _torch_run(torch, reference, torch_forward, x, torch.float32)
  truth = _torch_run(torch, exact, torch_forward, x, torch.float64)
  features, outputs, stats = _jit_forward(model)(x)
  train_features, train_outputs = _diffs(name, (features, outputs), want)
  reference_train_error = max(_diffs(name, want, truth))
  exact_train_error = max(_diffs(name, (features, outputs), truth))
  want_stats = convert(_numpy_state_dict(reference)).arrays
  got_stats = dict(nnx.to_flat_state(stats))
  if set(got_stats) != {p for p in want_stats if p[-1] in ("mean", "var")}:
    raise AssertionError(f"{name}: BatchNorm statistics of both sides differ in names")
  train_stats = max(_relative_diff(v.get_value(), want_stats[p]) for p, v in got_stats.items())
  reference.eval()
  model.eval()

  return Result(
      name=name, reference=reference_name, params=_num_params(model),
      reference_params=int(reference_params), train_features=train_features,
      train_outputs=train_outputs, train_stats=train_stats,
      reference_train_error=reference_train_error, exact_train_error=exact_train_error,
      shapes=tuple(tuple(s) for s in shapes), train_shape=train_shape,
      seconds=time.time() - start, **{k: float(v) for k, v in out.items()})


def timm_reference(arch: str, seed: int = 0):
  """(timm features_only model with calibrated BatchNorm, the ImageNet classifier
  ``timm.create_model(arch)`` holding the same weights): the second's state dict has
  the layout of timm's ImageNet checkpoints."""
  torch, timm, _ = import_reference()
  torch.manual_seed(seed)
  features = timm.create_model(arch, features_only=True)
  calibrate_batch_norm(torch, features, lambda m, x: (m(x), {}),
                       _inputs(CALIBRATION_SHAPE, 3, seed))
  classifier = timm.create_model(arch)
  loaded = classifier.load_state_dict(features.state_dict(), strict=False)
  head = names.CLASSIFIER_MODULES[names.family(arch)]
  if loaded.unexpected_keys or any(k.split(".")[0] not in head for k in loaded.missing_keys):
    raise AssertionError(f"timm {arch}: features_only and classifier layouts differ: {loaded}")
  return features, classifier


def encoder_fidelity(arch: str, *, shapes=SHAPES, train_shape=None, seed: int = 0,
                     weights_file: str | None = None) -> Result:
  """timm ImageNet classifier ``arch`` (random weights) -> our encoder, converted
  like a downloaded checkpoint (through ``weights_file`` as safetensors if given);
  compared with ``timm.create_model(arch, features_only=True)`` holding the same
  weights."""
  torch, _, _ = import_reference()
  features, classifier = timm_reference(arch, seed)
  if weights_file is not None:
    from safetensors import torch as st_torch  # pylint: disable=g-import-not-at-top
    st_torch.save_file({k: v.contiguous() for k, v in classifier.state_dict().items()},
                       weights_file)
    state_dict = io.read_state_dict(weights_file)
  else:
    state_dict = _numpy_state_dict(classifier)
  encoder, _, _ = converters.convert_encoder(state_dict, arch, source="timm")
  name_map = names.timm_encoder(arch)
  return measure(arch, f"timm.create_model('{arch}')", torch, features,
                 lambda m, x: (m(x), {}), encoder,
                 lambda sd: convert_state_dict(sd, name_map).sub(("encoder",)),
                 shapes=shapes, train_shape=train_shape, seed=seed)


def _smp_forward(m, x):
  # smp SegmentationModel.forward, keeping the features (smp's first, the input
  # itself at stride 1, is not one of ours).
  features = m.encoder(x)
  return features[1:], {"depth": m.segmentation_head(m.decoder(*features))}


def smp_fidelity(encoder: str, decoder: str, *, shapes=SHAPES, train_shape=None,
                 seed: int = 0) -> Result:
  """``smp.Unet`` / ``smp.DeepLabV3`` (1 output, logits) -> our 1-task model."""
  torch, _, smp = import_reference()
  torch.manual_seed(seed)
  cls = {"unet": smp.Unet, "deeplabv3": smp.DeepLabV3}[decoder]
  reference = cls(SMP_ENCODERS[encoder], encoder_weights=None, classes=1)
  calibrate_batch_norm(torch, reference, _smp_forward,
                       _inputs(CALIBRATION_SHAPE, 3, seed))
  model, _, _ = converters.convert_model(_numpy_state_dict(reference), encoder, source="smp",
                                         activations={"depth": "identity"})
  name_map = names.smp_model()
  return measure(f"{decoder} {encoder}",
                 f"smp.{cls.__name__}('{SMP_ENCODERS[encoder]}')", torch, reference,
                 _smp_forward, model, lambda sd: convert_state_dict(sd, name_map),
                 shapes=shapes, train_shape=train_shape, seed=seed)


def semantic_md_multitask(torch, smp, encoder: str, tasks: Mapping[str, int]):
  """A semantic_md multi-task UNet (the layout of its ``MultiLossModel`` /
  ``TripleLossModel``: ``encoder``, ``decoder_<task>``, ``head_<task>``; smp parts,
  3x3 heads without activation), built from smp 0.3.3 modules."""
  from segmentation_models_pytorch.base import SegmentationHead  # pylint: disable=g-import-not-at-top
  from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder  # pylint: disable=g-import-not-at-top

  class MultiTaskUnet(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.tasks = tuple(tasks)
      self.encoder = smp.encoders.get_encoder(SMP_ENCODERS[encoder], in_channels=3, depth=5,
                                              weights=None)
      for task, classes in tasks.items():
        setattr(self, f"decoder_{task}", UnetDecoder(
            encoder_channels=self.encoder.out_channels, decoder_channels=(256, 128, 64, 32, 16),
            n_blocks=5, use_batchnorm=True, center=False, attention_type=None))
        setattr(self, f"head_{task}", SegmentationHead(16, classes, activation=None,
                                                       kernel_size=3))

    def forward(self, x):
      features = self.encoder(x)
      return features[1:], {
          names.SEMANTIC_MD_TASKS.get(t, t): getattr(self, f"head_{t}")(
              getattr(self, f"decoder_{t}")(*features)) for t in self.tasks}

  return MultiTaskUnet()


def semantic_md_fidelity(encoder: str, tasks: Mapping[str, int] | None = None, *,
                         shapes=SHAPES, train_shape=None, seed: int = 0) -> Result:
  """A semantic_md multi-task UNet (default: the 2-head depth + 40-class semantics)
  -> our multi-task model, converted from its state dict."""
  torch, _, smp = import_reference()
  tasks = dict(tasks or {"depth": 1, "semantic": 40})
  torch.manual_seed(seed)
  reference = semantic_md_multitask(torch, smp, encoder, tasks)
  forward = lambda m, x: m(x)
  calibrate_batch_norm(torch, reference, forward, _inputs(CALIBRATION_SHAPE, 3, seed))
  model, _, _ = converters.convert_model(_numpy_state_dict(reference), encoder,
                                         source="semantic_md",
                                         activations={names.SEMANTIC_MD_TASKS.get(t, t): "identity"
                                                      for t in tasks})
  name_map = names.semantic_md()
  return measure(f"{len(tasks)}-head unet {encoder}",
                 f'semantic_md {len(tasks)}-head ({", ".join(tasks)})', torch, reference,
                 forward, model, lambda sd: convert_state_dict(sd, name_map),
                 shapes=shapes, train_shape=train_shape, seed=seed)

