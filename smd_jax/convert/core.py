"""State dict (numpy, PyTorch layout) -> our layout -> values of an NNX model.

Two steps, both pure numpy until the last write:

1. `convert_state_dict`: rename with a name map (`names.py`) and transform the layout
   of every tensor: conv ``weight`` [O, I/g, kH, kW] -> ``kernel`` [kH, kW, I/g, O];
   BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` -> ``scale``/
   ``bias``/``mean``/``var``; conv ``bias`` -> ``bias``; ``num_batches_tracked``
   dropped (our BatchNorm has a fixed momentum; PyTorch only uses the counter when
   ``momentum=None``).
2. `assign`: check the result against the model (every name known, every target a
   variable of the model with the same shape, every Param / BatchStat inside
   ``scope`` written) and only then write the values. All problems are reported
   together in one `ConversionError`.

The one allowed shape difference is the widening of the encoder's first conv
(``stem``): a kernel with fewer input channels than the model's (ImageNet RGB into a
3 + k channel model) fills the first input channels; the others keep the model's own
initialisation (timm's / torchvision's init of that conv, as a fresh model has it).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from smd_jax.convert import names as names_lib

Path = tuple  # of str (attribute / dict key) and int (list index)

# How many names each category of a ConversionError lists.
MAX_LISTED = 10


class ConversionError(ValueError):
  """Weights that do not fit a model: unknown names, missing or unexpected variables,
  shape mismatches (all of them, by category)."""


def dotted(path: Path) -> str:
  return ".".join(str(p) for p in path)


def _indices(path: Iterable[str]) -> Path:
  # nnx.List children are indexed by int; attributes and nnx.Dict keys are str.
  return tuple(int(p) if isinstance(p, str) and p.isdigit() else p for p in path)


@dataclasses.dataclass
class Converted:
  """Arrays in our layout keyed by our variable paths.

  Attributes:
    arrays: our path -> array (float32 numpy).
    sources: our path -> the state-dict name it came from.
    ignored: state-dict names left out on purpose (classifier heads, duplicates);
      ``num_batches_tracked`` counters are always dropped and not listed.
    unknown: state-dict names the name map or the leaf rules do not know.
  """

  arrays: dict[Path, np.ndarray]
  sources: dict[Path, str]
  ignored: list[str] = dataclasses.field(default_factory=list)
  unknown: list[str] = dataclasses.field(default_factory=list)

  def sub(self, prefix: Sequence) -> "Converted":
    """The entries under ``prefix``, with paths relative to it (e.g. the encoder's
    arrays for a bare encoder module)."""
    n = len(prefix)
    keep = [p for p in self.arrays if tuple(p[:n]) == tuple(prefix)]
    return Converted({p[n:]: self.arrays[p] for p in keep},
                     {p[n:]: self.sources.get(p, dotted(p)) for p in keep}, list(self.ignored),
                     list(self.unknown))

  def num_params(self) -> int:
    return sum(int(a.size) for p, a in self.arrays.items() if p[-1] not in ("mean", "var"))


def _leaf(leaf: str, value: np.ndarray) -> tuple[str, np.ndarray] | None:
  """(our leaf, value in our layout); None to ignore; UnknownName otherwise."""
  if leaf == "weight" and value.ndim == 4:
    return "kernel", np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
  if leaf == "weight" and value.ndim == 1:
    return "scale", value  # BatchNorm
  if leaf in ("bias", "running_mean", "running_var"):
    return {"bias": "bias", "running_mean": "mean", "running_var": "var"}[leaf], value
  if leaf == "num_batches_tracked":
    return None
  raise names_lib.UnknownName(leaf)


def convert_state_dict(state_dict: Mapping[str, np.ndarray],
                       name_map: names_lib.NameMap) -> Converted:
  """Renames and re-lays-out a PyTorch state dict (values numpy arrays)."""
  out = Converted({}, {})
  for name, value in state_dict.items():
    *module_path, leaf = name.split(".")
    value = np.asarray(value)
    try:
      if not module_path:
        raise names_lib.UnknownName(name)
      target = name_map(module_path)
      if target is names_lib.IGNORED:
        out.ignored.append(name)
        continue
      converted = _leaf(leaf, value)
    except names_lib.UnknownName:
      out.unknown.append(name)
      continue
    if converted is None:  # num_batches_tracked: always dropped, not listed
      continue
    our_leaf, array = converted
    path = _indices((*target, our_leaf))
    if path in out.arrays:
      raise ConversionError(f"{name} and {out.sources[path]} both map to {dotted(path)}")
    # A copy: a torch tensor's .numpy() shares its memory, and jnp.asarray may too, so
    # without it a model could alias (and see later in-place updates of) torch buffers.
    out.arrays[path] = np.array(array, np.float32)
    out.sources[path] = name
  return out


def model_variables(module: nnx.Module) -> dict[Path, nnx.Variable]:
  """Every Param and BatchStat of ``module`` by path (no RNG state)."""
  return dict(nnx.to_flat_state(nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))))


def stem_path(module: nnx.Module) -> Path | None:
  """Path of the encoder's first conv kernel in a `DenseModel` or a bare encoder."""
  encoder, prefix = (module.encoder, ("encoder",)) if hasattr(module, "encoder") else (module, ())
  for attr in names_lib.STEM.values():
    if hasattr(encoder, attr):
      return (*prefix, attr, "kernel")
  return None


@dataclasses.dataclass
class AssignReport:
  """What `assign` wrote: paths loaded, the widened stem (if any), and the model's
  Params / BatchStats left as they were (outside ``scope``)."""

  loaded: list[Path]
  widened: Path | None
  kept: list[Path]
  ignored: list[str]

  def summary(self) -> str:
    text = f"{len(self.loaded)} arrays loaded"
    if self.widened is not None:
      text += f", {dotted(self.widened)} widened (new input channels keep their init)"
    if self.kept:
      text += f", {len(self.kept)} model arrays kept as initialised"
    if self.ignored:
      text += f", {len(self.ignored)} state-dict entries ignored"
    return text


def _listing(label: str, items: list[str]) -> str:
  """Up to MAX_LISTED items; more are grouped by module (``decoders.semantic.* (26)``)."""
  if len(items) > MAX_LISTED:
    groups: dict[str, int] = {}
    for item in items:
      path = item.split(" -> ")[-1].split(" ")[0].split(".")
      key = ".".join(path[:2]) + (".*" if len(path) > 2 else "")
      groups[key] = groups.get(key, 0) + 1
    items = [f"{key} ({n})" for key, n in groups.items()]
  shown = ", ".join(items[:MAX_LISTED])
  more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
  return f"{label}: {shown}{more}"


def _shape(x) -> tuple[int, ...]:
  return tuple(int(d) for d in x.shape)


def assign(module: nnx.Module, converted: Converted, *, scope: Sequence = (),
           widen: Path | None = None, what: str = "weights") -> AssignReport:
  """Writes ``converted`` into ``module``'s variables in place, or raises.

  Args:
    module: the target (a `DenseModel`, an encoder, any NNX module).
    converted: arrays keyed by paths relative to ``module``.
    scope: path prefix that must be covered completely: every Param / BatchStat under
      it has to be in ``converted`` (``()``: the whole module; ``('encoder',)`` for
      encoder-only weights). Variables outside keep their values.
    widen: path of a conv kernel allowed to have fewer input channels than the
      model's (the encoder stem, see the module docstring); None: none.
    what: names the weights in the error message.

  Raises:
    ConversionError: listing unknown names, unexpected paths (not in the model),
      shape mismatches and missing paths, nothing written.
  """
  variables = model_variables(module)
  scope = tuple(scope)
  unexpected, mismatched, widened = [], [], None
  for path, array in converted.arrays.items():
    source = converted.sources.get(path, dotted(path))
    label = source if source == dotted(path) else f"{source} -> {dotted(path)}"
    if path not in variables:
      unexpected.append(label)
      continue
    want = _shape(variables[path].get_value())
    if want == array.shape:
      continue
    if (path == widen and array.ndim == 4 and len(want) == 4 and array.shape[:2] == want[:2]
        and array.shape[3] == want[3] and array.shape[2] < want[2]):
      widened = path
      continue
    mismatched.append(f"{label} {array.shape} vs model {want}")
  missing = [dotted(p) for p in variables
             if tuple(p[:len(scope)]) == scope and p not in converted.arrays]
  problems = [(f"{len(converted.unknown)} unknown", "unknown names", converted.unknown),
              (f"{len(unexpected)} unexpected", "not in the model", unexpected),
              (f"{len(mismatched)} mismatched", "shape mismatch", mismatched),
              (f"{len(missing)} missing", "missing (in the model, not in the weights)",
               missing)]
  problems = [p for p in problems if p[2]]
  if problems:
    if sum(len(items) for _, _, items in problems) == 1:
      (_, label, items), = problems
      raise ConversionError(f"{what} do not fit the model: {label}: {items[0]}")
    head = ", ".join(count for count, _, _ in problems)
    lines = [_listing(label, items) for _, label, items in problems]
    raise ConversionError(f"{what} do not fit the model ({head}):\n  " + "\n  ".join(lines))

  for path, array in converted.arrays.items():
    variable = variables[path]
    if path == widened:
      value = np.array(variable.get_value(), np.float32)
      value[:, :, :array.shape[2], :] = array
      array = value
    variable.set_value(jnp.asarray(array, variable.get_value().dtype))
  kept = [p for p in variables if p not in converted.arrays]
  return AssignReport(sorted(converted.arrays, key=dotted), widened, kept,
                      list(converted.ignored))


def load_state_dict(module: nnx.Module, state_dict: Mapping[str, np.ndarray],
                    name_map: names_lib.NameMap, **kwargs) -> AssignReport:
  """`convert_state_dict` then `assign` (kwargs as `assign`)."""
  return assign(module, convert_state_dict(state_dict, name_map), **kwargs)
