"""Command line: convert PyTorch weights into a checkpoint ``config.init_from`` loads.

    # ImageNet encoder (timm's efficientnet_b2/b3/b4 or resnet50; torchvision's
    # resnet50 has the same names): the encoder only, classifier ignored.
    python -m smd_jax.convert --from timm --arch efficientnet_b4 model.safetensors --out DIR
    # ... with the first conv widened to 3 + k input channels now (optional: init_from
    # widens it anyway when the training config has semantic input channels).
    python -m smd_jax.convert --from timm --arch efficientnet_b4 model.safetensors \\
        --in_channels 43 --out DIR
    # A whole smp or semantic_md model (decoder, heads and input channels are read
    # off the weights; --arch is inferred when left out):
    python -m smd_jax.convert --from semantic_md weights.pth --out DIR
    python -m smd_jax.convert --from semantic_md weights.pth --task sobel=depth_edges --out DIR
    # A Hugging Face Hub model id (org/name[@revision]) in place of the file: its
    # model.safetensors is downloaded through huggingface_hub. Without --out it is
    # converted into the cache that config.init_from=<id> reads (smd_jax/convert/hub.py):
    # pre-fetch once, then train with HF_HUB_OFFLINE=1.
    python -m smd_jax.convert --from timm timm/efficientnet_b4.ra2_in1k
    python -m smd_jax.convert --from timm timm/efficientnet_b4.ra2_in1k@main --out DIR

Writes ``DIR/state`` (Orbax) and ``DIR/smd_jax_convert.json`` and prints what was
loaded and what was ignored. Exit status 1 with the list of problems when the
weights do not fit (unknown names, missing or unexpected tensors, shape mismatches),
and with one line ``error: ...`` for a bad flag. Flags are absl's (``--flag=value``
or ``--flag value``); the hyphenated spellings (``--in-channels``) work as well.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Sequence

from smd_jax import huge_pages  # imports no jax

if __name__ == "__main__":  # first: only the re-executed process pays the imports below
  huge_pages.reexec_with_huge_pages()

import flax  # noqa: E402
import jax  # noqa: E402
from absl import flags  # noqa: E402

from smd_jax import cli  # noqa: E402
from smd_jax.convert import converters, hub, io  # noqa: E402
from smd_jax.convert.core import ConversionError, dotted  # noqa: E402
from smd_jax.errors import UserError  # noqa: E402
from smd_jax.models import registry  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Request:
  """One conversion: what the flags ask for."""
  weights: str  # .safetensors (no torch needed) or .pth/.pt/.bin/.ckpt
  source: str  # a key of converters.SOURCES
  out: str
  arch: str | None = None
  in_channels: int | None = None
  task: Sequence[str] = ()
  seed: int = 0
  hub: dict | None = None  # where a Hub download came from (repo_id, revision, commit)


def define_flags(flag_values: flags.FlagValues) -> None:
  """Registers this command's flags (absl; `--in-channels` also works for `--in_channels`)."""
  flags.DEFINE_enum("from", None, list(converters.SOURCES), "Layout of the weights.",
                    flag_values=flag_values)
  flags.DEFINE_enum("arch", None, sorted(registry.ENCODERS),
                    "The encoder (inferred from the shapes when left out).",
                    flag_values=flag_values)
  flags.DEFINE_string("out", None, "Output directory (for a Hub id, default: the converted "
                      "cache config.init_from reads).", flag_values=flag_values)
  flags.DEFINE_integer("in_channels", None, "Encoder sources: input channels of the first conv "
                       "(3 + k); the RGB filters are kept, new ones get the encoder init "
                       "(--seed).", flag_values=flag_values)
  flags.DEFINE_multi_string("task", [], "semantic_md / smp task name map THEIRS=OURS, "
                            "repeatable, e.g. sobel=depth_edges (defaults: depth, semantic, "
                            "contours, sobel=depth_edges).", flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Init of what the weights do not cover (new input channels).",
                       flag_values=flag_values)
  flags.mark_flags_as_required(["from"], flag_values=flag_values)
  cli.define_hyphen_aliases(flag_values)


def _tasks(pairs: Sequence[str]) -> dict[str, str]:
  out = {}
  for pair in pairs:
    theirs, sep, ours = pair.partition("=")
    if not sep or not theirs or not ours:
      raise UserError(f"--task expects THEIRS=OURS, e.g. --task sobel=depth_edges; got {pair!r}.")
    out[theirs] = ours
  return out


def convert(request: Request) -> dict:
  """Runs one conversion; returns the metadata written."""
  state_dict = io.read_state_dict(request.weights)
  common = {"source": request.source, "input": os.path.abspath(request.weights),
            "sha256": io.sha256(request.weights),
            "versions": {"jax": jax.__version__, "flax": flax.__version__}}
  if request.hub:
    common["hub"] = dict(request.hub)
  if request.source in converters.ENCODER_SOURCES:
    in_channels = request.in_channels or 3
    encoder, report, arch = converters.convert_encoder(
        state_dict, request.arch, source=request.source, in_channels=in_channels, seed=request.seed)
    arrays = converters.arrays_of(encoder, report.loaded, prefix=("encoder",))
    meta = {**common, "arch": arch, "scope": "encoder", "in_channels": in_channels,
            "widened": dotted(("encoder",) + report.widened) if report.widened else None}
  else:
    if request.in_channels is not None:
      raise UserError("--in_channels is for encoder sources; whole models keep theirs.")
    model, report, model_config = converters.convert_model(
        state_dict, request.arch, source=request.source, tasks=_tasks(request.task),
        seed=request.seed)
    arrays = converters.arrays_of(model, report.loaded)
    meta = {**common, "arch": model_config["encoder"], "scope": "model",
            "in_channels": model_config["in_channels"],
            "model": {k: (list(v) if isinstance(v, tuple) else v)
                      for k, v in model_config.items()}}
  meta.update(ignored=sorted(report.ignored), num_arrays=len(arrays),
              num_params=int(sum(a.size for p, a in arrays.items() if not io.is_batch_stat(p))))
  io.save_converted(request.out, arrays, meta)
  return meta


def run(flag_values: flags.FlagValues, args: Sequence[str]) -> int:
  """Converts the weights file named by the one positional argument; returns the exit status."""
  if len(args) != 1:
    raise UserError(f"Expected one weights file, got {len(args)} ({' '.join(args) or 'none'}): "
                    "python -m smd_jax.convert --from timm WEIGHTS --out DIR.")
  hub_id = hub.parse_hub_id(args[0])
  if hub_id is not None and flag_values.out is None:
    return _prefetch(flag_values, hub_id)
  if flag_values.out is None:
    raise UserError(f"--out DIR is needed to convert {args[0]} (a Hub id org/name[@revision] "
                    "without --out fills the init_from cache instead).")
  weights, provenance = args[0], None
  if hub_id is not None:
    weights = hub.download(hub_id)
    provenance = {"repo_id": hub_id.repo_id,
                  "revision": hub_id.revision or hub.DEFAULT_REVISION,
                  "commit": os.path.basename(os.path.dirname(weights)),
                  "filename": hub.WEIGHTS_FILE}
  request = Request(weights=weights, source=flag_values["from"].value, out=flag_values.out,
                    arch=flag_values.arch, in_channels=flag_values.in_channels,
                    task=flag_values.task, seed=flag_values.seed, hub=provenance)
  try:
    meta = convert(request)
  except (ConversionError, ValueError, ImportError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  ignored = meta["ignored"]
  print(f'{meta["source"]} {meta["arch"]} ({meta["scope"]}): {meta["num_arrays"]} arrays, '
        f'{meta["num_params"]:,} parameters -> {os.path.abspath(request.out)}')
  if meta.get("widened"):
    print(f'  widened {meta["widened"]} to {meta["in_channels"]} input channels')
  if meta.get("model"):
    m = meta["model"]
    print(f'  model: {m["encoder"]} {m["decoder"]}, in_channels {m["in_channels"]}, '
          f'input_block {m["input_block"]}, heads '
          + ", ".join(f'{t}:{h["num_outputs"]}' for t, h in m["heads"].items()))
  if ignored:
    shown = ", ".join(ignored[:8]) + (f" (+{len(ignored) - 8} more)" if len(ignored) > 8 else "")
    print(f"  ignored {len(ignored)}: {shown}")
  return 0


def _prefetch(flag_values: flags.FlagValues, hub_id: hub.HubId) -> int:
  """A Hub id without --out: download and convert into the cache `hub.fetch` reads."""
  if flag_values["from"].value not in converters.ENCODER_SOURCES or flag_values.in_channels:
    raise UserError("Without --out a Hub id is converted into the init_from cache, which holds "
                    "ImageNet encoders (--from timm, 3 input channels; init_from widens the "
                    "stem): pass --out DIR for other conversions.")
  fetched = hub.fetch(hub_id, expect_arch=flag_values.arch)
  print(f"{hub_id} -> {fetched.arch} at commit {fetched.commit} "
        f"({'downloaded and converted' if fetched.downloaded else 'already cached'}): "
        f"{fetched.directory}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """The command on `argv` (without the program name; None: sys.argv); returns the exit status."""
  return cli.run_argv(run, define_flags, argv, usage=__doc__, prog="python -m smd_jax.convert")


if __name__ == "__main__":
  sys.exit(main())
