"""Name maps: PyTorch state-dict module paths -> paths in our Flax models.

A state-dict name such as ``decoder.blocks.0.conv1.1.running_mean`` is split into a
module path (``['decoder', 'blocks', '0', 'conv1', '1']``) and a leaf
(``running_mean``). A *name map* takes the module path and returns our module path
inside a `DenseModel` (``('decoders', 'depth', 'blocks', '0', 'conv1', 'bn')``), or
`IGNORED` for modules we deliberately leave out (an ImageNet classifier), or raises
`UnknownName`. Numeric parts become list indices later (`core.py`); leaves are
mapped there too (``weight -> kernel | scale``, ``running_mean/var -> mean/var``).

Our modules carry timm's / torchvision's / smp's attribute names (see the model
docstrings), so the maps below only bridge what differs:

* timm ImageNet checkpoints (``timm.create_model(arch).state_dict()``, also the
  ``model.safetensors`` files of timm's Hugging Face repos): encoder names verbatim
  under ``encoder``; the classifier part (EfficientNet ``conv_head``, ``bn2``,
  ``classifier``; ResNet ``fc``) is ignored. torchvision's ``resnet50`` uses the same
  names as timm's.
* smp 0.3.3 models (``smp.Unet`` / ``smp.DeepLabV3``): ``encoder.model.*`` for ``tu-``
  (timm) encoders, ``encoder.*`` for smp's torchvision ResNet; ``decoder.*``;
  ``segmentation_head.0`` (the head conv of ``Sequential(conv, upsampling,
  activation)``). One task, ``depth`` by default.
* semantic_md (charyyev/semantic_md, the paper authors' code): its single-task models
  are smp models, wrapped as ``model.*`` by the input variants (concat, one-hot,
  contours, semantic convolution); ``SemanticConvolutionModel`` registers the same smp
  model twice (``pretrained_model.*`` and ``model.*``: the first is ignored) and its
  input block as ``convolution.*``. Its multi-task models (``MultiLossModel``,
  ``TripleLossModel``, ``SobelLossModel``) hold ``encoder.model.*``,
  ``decoder_<task>.*`` and ``head_<task>.0.*``; ``TripleLossModel`` and
  ``SobelLossModel`` also carry an unused ``smp.Unet`` as ``test.*`` (ignored). Task
  names map by `SEMANTIC_MD_TASKS`.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

# A name map: torch module path -> our module path, or IGNORED.
NameMap = Callable[[Sequence[str]], "tuple[str, ...] | None"]
IGNORED = None

# semantic_md task suffix (decoder_<task>, head_<task>) -> our task name (configs/base.py).
SEMANTIC_MD_TASKS: dict[str, str] = {
    "depth": "depth",
    "semantic": "semantic",
    "contours": "contours",
    "sobel": "depth_edges",  # SobelLossModel: depth-discontinuity head
}

# Modules of a timm / torchvision ImageNet classifier that our feature encoders lack.
CLASSIFIER_MODULES = {
    "efficientnet": ("conv_head", "bn2", "classifier"),
    "resnet": ("fc",),
}

# The encoder's first conv (widened for 3 + k input channels), relative to the encoder.
STEM = {"efficientnet": "conv_stem", "resnet": "conv1"}


class UnknownName(KeyError):
  """A state-dict name that the name map does not know."""


def family(arch: str) -> str:
  """'efficientnet' or 'resnet' for an encoder name of the registry."""
  for name in CLASSIFIER_MODULES:
    if name in arch:
      return name
  raise ValueError(f"No weight import for encoder {arch!r}: known families "
                   f"{sorted(CLASSIFIER_MODULES)}")


def timm_encoder(arch: str) -> NameMap:
  """timm (or torchvision) ImageNet classifier of ``arch`` -> our ``encoder``."""
  ignored = CLASSIFIER_MODULES[family(arch)]

  def rename(path: Sequence[str]) -> tuple[str, ...] | None:
    if path[0] in ignored:
      return IGNORED
    return ("encoder", *path)

  return rename


def _conv_bn(index: str) -> str:
  # smp's Conv2dReLU and torchvision's Conv2dNormActivation: Sequential(conv, bn, act).
  names = {"0": "conv", "1": "bn"}
  if index not in names:
    raise UnknownName(index)
  return names[index]


def decoder_path(rest: Sequence[str]) -> tuple[str, ...]:
  """Inside an smp decoder (UNet or DeepLabV3) -> inside ours."""
  if not rest:
    raise UnknownName("")
  if rest[0] == "blocks":  # UNet: blocks.{i}.conv{1,2}.{0,1}
    if len(rest) != 4:
      raise UnknownName(".".join(rest))
    return ("blocks", rest[1], rest[2], _conv_bn(rest[3]))
  # DeepLabV3Decoder = Sequential(ASPP, conv3x3, BN, ReLU).
  if rest[0] in ("1", "2") and len(rest) == 1:
    return (("conv", "bn")[int(rest[0]) - 1],)
  if rest[0] != "0" or len(rest) < 3:
    raise UnknownName(".".join(rest))
  if rest[1] == "project":  # Sequential(conv, bn, relu, dropout)
    return ("aspp", "project", _conv_bn(rest[2]))
  if rest[1] != "convs" or len(rest) != 4:
    raise UnknownName(".".join(rest))
  branch, index = rest[2], rest[3]
  if branch == "4":  # ASPPPooling = Sequential(pool, conv, bn, relu)
    index = str(int(index) - 1)
  return ("aspp", "convs", branch, _conv_bn(index))


def head_path(rest: Sequence[str]) -> tuple[str, ...]:
  """smp SegmentationHead = Sequential(conv, upsampling, activation)."""
  if list(rest) != ["0"]:
    raise UnknownName(".".join(rest))
  return ("conv",)


def encoder_path(rest: Sequence[str]) -> tuple[str, ...]:
  """smp encoder: ``model.*`` for ``tu-`` (timm) encoders, else the module itself."""
  if rest and rest[0] == "model":
    rest = rest[1:]
  return ("encoder", *rest)


# torchvision MBConv (``block`` Sequential) inside the semantic convolution.
_MBCONV = {
    ("0", "0"): "conv_pw", ("0", "1"): "bn1", ("1", "0"): "conv_dw", ("1", "1"): "bn2",
    ("2", "fc1"): "se.conv_reduce", ("2", "fc2"): "se.conv_expand",
    ("3", "0"): "conv_pwl", ("3", "1"): "bn3",
}


def semantic_conv_path(rest: Sequence[str]) -> tuple[str, ...]:
  """semantic_md ``SemanticConvolutionModel.convolution`` = Sequential(conv3x3, BN,
  MBConv, conv1x1, BN, Sigmoid) -> our `SemanticConv`."""
  top = {"0": "conv_in", "1": "bn_in", "3": "conv_out", "4": "bn_out"}
  if len(rest) == 1 and rest[0] in top:
    return (top[rest[0]],)
  if len(rest) == 4 and rest[0] == "2" and rest[1] == "block" and (rest[2], rest[3]) in _MBCONV:
    return ("mbconv", *_MBCONV[(rest[2], rest[3])].split("."))
  raise UnknownName(".".join(rest))


def smp_model(task: str = "depth") -> NameMap:
  """A 1-task smp ``Unet`` / ``DeepLabV3`` -> a `DenseModel` whose task is ``task``."""

  def rename(path: Sequence[str]) -> tuple[str, ...]:
    head, rest = path[0], path[1:]
    if head == "encoder":
      return encoder_path(rest)
    if head == "decoder":
      return ("decoders", task, *decoder_path(rest))
    if head == "segmentation_head":
      return ("heads", task, *head_path(rest))
    raise UnknownName(".".join(path))

  return rename


def semantic_md(tasks: Mapping[str, str] | None = None, single_task: str = "depth") -> NameMap:
  """Any semantic_md model (see the module docstring) -> a `DenseModel`.

  Args:
    tasks: its task suffixes -> our task names (default `SEMANTIC_MD_TASKS`; a suffix
      not listed keeps its name).
    single_task: our task name for a 1-task smp model's ``decoder`` /
      ``segmentation_head``.
  """
  tasks = dict(SEMANTIC_MD_TASKS if tasks is None else tasks)
  single = smp_model(single_task)

  def rename(path: Sequence[str]) -> tuple[str, ...] | None:
    head, rest = path[0], path[1:]
    if head in ("pretrained_model", "test"):  # a duplicate / an unused module
      return IGNORED
    if head == "model" and rest:  # input-variant wrapper around an smp model
      return rename(rest)
    if head == "convolution":
      return ("input_block", *semantic_conv_path(rest))
    if head.startswith("decoder_"):
      task = head[len("decoder_"):]
      return ("decoders", tasks.get(task, task), *decoder_path(rest))
    if head.startswith("head_"):
      task = head[len("head_"):]
      return ("heads", tasks.get(task, task), *head_path(rest))
    return single(path)

  return rename
