"""Reading PyTorch weights from disk as numpy, and writing / reading converted ones.

Input formats (`read_state_dict`):

* ``.safetensors``: read with ``safetensors.numpy``; no PyTorch needed. (bfloat16
  tensors cannot be read that way: convert them to float32 first.)
* ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``: ``torch.load(map_location='cpu',
  weights_only=True)``, only where PyTorch is installed (``pip install -e ".[torch]"``,
  or ``tools/install_torch_reference.sh``). A checkpoint that wraps the state dict
  (``{'state_dict': ...}``, ``{'model_state_dict': ...}``, ``{'model': ...}``) is
  unwrapped, and a ``module.`` prefix on every name (``nn.DataParallel``) is dropped.

Output (`save_converted` / `load_converted`): a directory with

* ``state/``: an Orbax checkpoint (``StandardCheckpointer``) of ``{'params': tree,
  'model_state': tree}``, the trees nested dicts of float32 arrays keyed by our
  module path (list indices as strings), Params and BatchNorm statistics apart as in
  `smd_jax.training.steps.TrainState`;
* ``smd_jax_convert.json``: what it holds (source, encoder, scope 'encoder' or
  'model', the model config for whole models, input file and sha256, ignored names).

That directory is what ``config.init_from`` names.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pickle
from typing import Any, Mapping

import numpy as np

from smd_jax.convert.core import Path, dotted

STATE_DIR = "state"
METADATA_FILE = "smd_jax_convert.json"
FORMAT = "smd_jax.convert/1"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPERS = ("state_dict", "model_state_dict", "model")


def _unwrap(obj: Any) -> Mapping[str, Any]:
  for key in _WRAPPERS:
    if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
      obj = obj[key]
      break
  if not isinstance(obj, Mapping):
    raise ValueError(f"Expected a state dict (name -> tensor), got {type(obj).__name__}")
  names = list(obj)
  if names and all(n.startswith("module.") for n in names):
    obj = {n[len("module."):]: v for n, v in obj.items()}
  return obj


def _first_line(e: Exception) -> str:
  return (str(e).splitlines() or [type(e).__name__])[0][:200]


def _torch_load(path: str) -> Mapping[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'Reading {path} needs PyTorch: install the torch extra (pip install -e ".[torch]" '
        f"or tools/install_torch_reference.sh), or convert the file to .safetensors "
        f'(safetensors.torch.save_file(torch.load(path), "weights.safetensors")) and '
        f"pass that.") from e
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
    raise ValueError(f"{path} is not a PyTorch state dict torch.load can read (damaged, cut "
                     f"short or another format): {_first_line(e)}") from e
  try:
    obj = _unwrap(loaded)
  except ValueError as e:  # a pickle of something else
    raise ValueError(f"{path}: {e}; pass a file of the model's weights.") from e
  out = {}
  for name, tensor in obj.items():
    if not hasattr(tensor, "detach"):
      raise ValueError(f"{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor")
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
      tensor = tensor.float()
    out[name] = tensor.numpy()
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """name -> numpy array (floating point as float32) from a weights file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No weights file {path}")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".safetensors":
    try:
      from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"Reading {path} needs the safetensors package: pip install "
                        f"safetensors (or the torch / test extra)") from e
    try:
      loaded = st_numpy.load_file(path)
    except TypeError as e:  # e.g. bfloat16, which numpy lacks
      raise ValueError(f"{path}: safetensors.numpy cannot read it ({e}); save it as "
                       f"float32") from e
    except Exception as e:  # pylint: disable=broad-except  # safetensors' own SafetensorError
      raise ValueError(f"{path} is not a safetensors file (damaged, cut short or another "
                       f"format): {_first_line(e)}") from e
    obj = dict(_unwrap(loaded))
  elif suffix in TORCH_SUFFIXES:
    obj = _torch_load(path)
  else:
    raise ValueError(f"Unknown weights format {suffix!r} of {path}: expected .safetensors "
                     f"or one of {TORCH_SUFFIXES}")
  return {name: (np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating)
                 else np.asarray(v)) for name, v in obj.items()}


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _nest(arrays: Mapping[Path, np.ndarray]) -> dict:
  tree: dict = {}
  for path, array in arrays.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(str(part), {})
    node[str(path[-1])] = np.asarray(array, np.float32)
  return tree


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[Path, np.ndarray]:
  out = {}
  for key, value in tree.items():
    part = int(key) if key.isdigit() else key
    if isinstance(value, Mapping):
      out.update(_flatten(value, prefix + (part,)))
    else:
      out[prefix + (part,)] = np.asarray(value)
  return out


def is_batch_stat(path: Path) -> bool:
  """BatchNorm running statistics (our leaves ``mean`` / ``var``)."""
  return path[-1] in ("mean", "var")


def save_converted(out_dir: str, arrays: Mapping[Path, np.ndarray],
                   metadata: Mapping[str, Any]) -> str:
  """Writes ``arrays`` (our path -> array) as an Orbax checkpoint plus the metadata
  JSON into ``out_dir`` (created; an existing converted checkpoint there is replaced).
  Returns the absolute directory."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  state = os.path.join(out_dir, STATE_DIR)
  tree = {"params": _nest({p: a for p, a in arrays.items() if not is_batch_stat(p)}),
          "model_state": _nest({p: a for p, a in arrays.items() if is_batch_stat(p)})}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(state, tree, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  meta = {"format": FORMAT,
          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          **metadata}
  with open(os.path.join(out_dir, METADATA_FILE), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
    f.write("\n")
  return out_dir


def read_metadata(directory: str) -> dict:
  path = os.path.join(directory, METADATA_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{directory} is not a converted checkpoint (no {METADATA_FILE}); write one with "
        f"python -m smd_jax.convert")
  with open(path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise ValueError(f'{path}: format {meta.get("format")!r}, expected {FORMAT!r}')
  return meta


def load_converted(directory: str) -> tuple[dict[Path, np.ndarray], dict]:
  """(our path -> numpy array, metadata) of a directory written by `save_converted`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.abspath(directory)
  meta = read_metadata(directory)
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.restore(os.path.join(directory, STATE_DIR))
  checkpointer.close()
  arrays = {**_flatten(tree.get("params", {})), **_flatten(tree.get("model_state", {}))}
  return arrays, meta


__all__ = ["METADATA_FILE", "STATE_DIR", "dotted", "load_converted", "read_metadata",
           "read_state_dict", "save_converted", "sha256"]
