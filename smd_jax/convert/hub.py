"""ImageNet encoders by Hugging Face Hub id: download, convert once, cache, load offline.

``config.init_from`` (and ``python -m smd_jax.convert``) take a Hub model id besides a
converted directory::

    timm/efficientnet_b4.ra2_in1k          # the repository's main revision
    timm/efficientnet_b4.ra2_in1k@<rev>    # a branch, tag or 40-hex commit
    imagenet                               # DEFAULT_WEIGHTS[config.model.encoder]

The repository's ``model.safetensors`` comes through ``huggingface_hub.hf_hub_download``
into its cache. ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are
read at each call (huggingface_hub reads them once, at import), ``HF_TOKEN`` by
huggingface_hub for private or gated repositories. The file is converted without torch
(`converters.convert_encoder`, encoder only, 3 input channels) and written as a
converted checkpoint (`io.save_converted`) under::

    $SMD_JAX_CACHE/converted/<org>--<name>/<commit>/     (default ~/.cache/smd_jax)
    $SMD_JAX_CACHE/converted/<org>--<name>/refs/<revision>   -> <commit>

A run whose revision is in ``refs/`` (or is a cached commit) loads that directory and
makes no request at all, online or offline: ``main`` stays the commit it was when first
fetched (delete the ``refs`` file, or pass ``@<commit>``, to move on). The directory is
written under a temporary name and renamed into place, so a crash leaves no half
cache. Widening the first conv to 3 + k input channels happens when the weights are
loaded into a model (`converters.load_pretrained`), so one cached conversion serves
every semantic input.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import uuid
from typing import Any, Mapping
from urllib import parse

import flax
import jax

from smd_jax import output_files
from smd_jax.convert import io, names
from smd_jax.convert.core import ConversionError, convert_state_dict
from smd_jax.errors import UserError
from smd_jax.models import registry

WEIGHTS_FILE = "model.safetensors"
DEFAULT_REVISION = "main"
# ``config.init_from`` value meaning "the weights the paper's authors started from for
# this encoder" (smp's ``encoder_weights="imagenet"``), resolved by `DEFAULT_WEIGHTS`.
IMAGENET = "imagenet"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
  """A Hub repository of ImageNet weights and the image normalisation they expect
  (timm's ``pretrained_cfg``: RGB in [0, 1], then (x - mean) / std per channel)."""
  repo_id: str
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD


# The weights the Semantic-MD authors trained from: timm 0.9.2's default pretrained tag
# of each encoder, which `timm.create_model(name, pretrained=True)` (their
# download_model_weights.py; also smp 0.3.3's ``tu-`` encoders) downloads from the Hub.
# The default tag is the first one listed with weights (timm/models/_registry.py:43-72,
# ``hf_hub_id='timm/'`` -> 'timm/<arch>.<tag>', :108-110); the tags are listed in
# timm/models/efficientnet.py:952-963 (b2: ra_in1k, b3 and b4: ra2_in1k) and
# timm/models/resnet.py:648-650 (resnet50: a1_in1k). All four pretrained configs use
# timm's IMAGENET_DEFAULT_MEAN / _STD (timm/data/constants.py:3-4; efficientnet.py:885-893,
# resnet.py:550-576), which is what `smd_jax.semantics.normalize_image` applies.
DEFAULT_WEIGHTS: dict[str, PretrainedWeights] = {
    "efficientnet_b2": PretrainedWeights("timm/efficientnet_b2.ra_in1k"),
    "efficientnet_b3": PretrainedWeights("timm/efficientnet_b3.ra2_in1k"),
    "efficientnet_b4": PretrainedWeights("timm/efficientnet_b4.ra2_in1k"),
    "resnet50": PretrainedWeights("timm/resnet50.a1_in1k"),
}

# org/name as the Hub spells repository ids; a revision after '@' (branch, tag, commit).
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[^\s@]+))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclasses.dataclass(frozen=True)
class HubId:
  """A parsed ``org/name[@revision]``; ``revision`` None means the main branch."""
  repo_id: str
  revision: str | None = None

  def __str__(self) -> str:
    return self.repo_id + (f"@{self.revision}" if self.revision else "")


@dataclasses.dataclass(frozen=True)
class Fetched:
  """A converted checkpoint of a Hub file, and where it came from."""
  directory: str  # what `converters.load_pretrained` reads
  repo_id: str
  revision: str  # as asked ('main' when none was given)
  commit: str  # the resolved revision
  filename: str
  sha256: str  # of the downloaded file
  arch: str
  downloaded: bool  # False: the converted cache answered, no request made

  def provenance(self) -> dict[str, Any]:
    return {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit,
            "filename": self.filename, "sha256": self.sha256, "arch": self.arch}


def parse_hub_id(value: str) -> HubId | None:
  """``org/name[@revision]`` -> HubId; None when ``value`` is an existing path or does
  not look like a Hub id (then it is meant as a directory)."""
  value = value.strip()
  if not value or os.path.exists(value) or value.startswith((".", "/", "~")):
    return None
  match = _HUB_ID.match(value)
  if match is None:
    return None
  return HubId(match["repo"], match["rev"])


def default_repo(encoder: str | None) -> str:
  """The Hub id of `DEFAULT_WEIGHTS` for ``encoder``, or a UserError that says what to set."""
  try:
    return DEFAULT_WEIGHTS[encoder].repo_id
  except KeyError:
    raise UserError(
        f"init_from={IMAGENET!r} names the authors' ImageNet weights, which exist for the "
        f"encoders {sorted(DEFAULT_WEIGHTS)}, not for {encoder!r}: set --config.init_from to a "
        "Hub id (org/name[@revision]) or a converted directory, or to '' to train from "
        "scratch.") from None


def cache_root() -> str:
  """$SMD_JAX_CACHE, else $XDG_CACHE_HOME/smd_jax, else ~/.cache/smd_jax."""
  root = os.environ.get("SMD_JAX_CACHE")
  if not root:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = os.path.join(base, "smd_jax")
  return os.path.abspath(os.path.expanduser(root))


def _repo_dir(repo_id: str) -> str:
  return os.path.join(cache_root(), "converted", repo_id.replace("/", "--"))


def _ref_file(repo_id: str, revision: str) -> str:
  return os.path.join(_repo_dir(repo_id), "refs", parse.quote(revision, safe=""))


def _is_converted(directory: str) -> bool:
  # The metadata is written last and the directory renamed into place whole.
  return os.path.isfile(os.path.join(directory, io.METADATA_FILE))


def cached(hub_id: HubId) -> str | None:
  """The converted directory of ``hub_id`` when it is in the cache (no network), else None."""
  revision = hub_id.revision or DEFAULT_REVISION
  commit = revision if _COMMIT.match(revision) else None
  if commit is None:
    try:
      with open(_ref_file(hub_id.repo_id, revision)) as f:
        commit = f.read().strip()
    except OSError:
      return None
  directory = os.path.join(_repo_dir(hub_id.repo_id), commit)
  return directory if commit and _is_converted(directory) else None


def _env_flag(name: str) -> bool:
  return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def offline() -> bool:
  """HF_HUB_OFFLINE, read now (huggingface_hub itself reads it once, at import)."""
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  return bool(constants.HF_HUB_OFFLINE) or _env_flag("HF_HUB_OFFLINE")


def _hf_cache_dir() -> str | None:
  # huggingface_hub fixes its cache at import; honour the variables set later too.
  if os.environ.get("HF_HUB_CACHE"):
    return os.environ["HF_HUB_CACHE"]
  if os.environ.get("HF_HOME"):
    return os.path.join(os.environ["HF_HOME"], "hub")
  return None


def _prefetch_hint(hub_id: HubId) -> str:
  return (f"run `python -m smd_jax.convert --from timm {hub_id}` once with network access "
          f"(it fills the cache {cache_root()}), or set --config.init_from to a converted "
          "directory, or to '' to train from scratch")


def _download_error(error: Exception, hub_id: HubId, endpoint: str) -> UserError:
  """The one-line UserError for what ``hf_hub_download`` raised."""
  from huggingface_hub import errors  # pylint: disable=g-import-not-at-top
  repo, revision = hub_id.repo_id, hub_id.revision or DEFAULT_REVISION
  # Most specific first: LocalEntryNotFoundError is an EntryNotFoundError, GatedRepoError
  # a RepositoryNotFoundError.
  messages = (
      (errors.LocalEntryNotFoundError, lambda: (
          f"{hub_id} is neither a directory nor in the cache, and "
          + ("HF_HUB_OFFLINE is set" if offline() else f"the Hub at {endpoint} cannot be reached")
          + f": {_prefetch_hint(hub_id)}.")),
      (errors.GatedRepoError, lambda: (
          f"{repo} on {endpoint} is gated: accept its terms on the Hub and log in "
          "(hf auth login, or set HF_TOKEN).")),
      (errors.RepositoryNotFoundError, lambda: (
          f"No model repository {repo} on {endpoint} (and no directory of that name): check "
          f"the id, e.g. {DEFAULT_WEIGHTS['efficientnet_b4'].repo_id}; private repositories "
          "need HF_TOKEN.")),
      (errors.RevisionNotFoundError, lambda: (
          f"{repo} has no revision {revision!r} on {endpoint}: give a branch, tag or commit "
          "of it after '@'.")),
      (errors.EntryNotFoundError, lambda: (
          f"{repo}@{revision} has no {WEIGHTS_FILE} (smd_jax reads safetensors weights "
          "only): pick a repository that has one, or download its weights and convert them "
          "with python -m smd_jax.convert.")),
  )
  for kind, message in messages:
    if isinstance(error, kind):
      return UserError(message())
  first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return UserError(f"Downloading {WEIGHTS_FILE} of {hub_id} from {endpoint} failed: "
                   f"{first_line}")


def download(hub_id: HubId) -> str:
  """``model.safetensors`` of ``hub_id`` through huggingface_hub's cache; returns its
  path ``.../snapshots/<commit>/model.safetensors``. Offline (HF_HUB_OFFLINE) it answers
  from the cache only. UserError (one line) for every failure."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or huggingface_hub.constants.ENDPOINT
  try:
    return huggingface_hub.hf_hub_download(
        hub_id.repo_id, WEIGHTS_FILE, revision=hub_id.revision, cache_dir=_hf_cache_dir(),
        endpoint=endpoint, local_files_only=offline(), library_name="smd_jax")
  except Exception as e:  # pylint: disable=broad-except  (all become one line)
    raise _download_error(e, hub_id, endpoint) from e


def _check_arch(arch: str, expect: str | None, hub_id: HubId) -> None:
  if expect is not None and arch != expect:
    raise UserError(f"{hub_id} holds {arch} weights, but the model's encoder is {expect}: "
                    f"use the weights of {expect} (e.g. {DEFAULT_WEIGHTS[expect].repo_id})"
                    if expect in DEFAULT_WEIGHTS else
                    f"{hub_id} holds {arch} weights, but the model's encoder is {expect}.")


def _fits(state_dict: Mapping[str, Any], arch: str | None) -> bool:
  """Whether ``state_dict`` (timm names) has exactly the variables of encoder ``arch``."""
  from smd_jax.convert import converters  # pylint: disable=g-import-not-at-top
  try:
    arrays = convert_state_dict(state_dict, names.timm_encoder(arch)).sub(("encoder",)).arrays
  except (ValueError, TypeError):  # no arch, or one without a timm name map
    return False
  if arch not in registry.ENCODERS:
    return False
  stem = arrays.get((names.STEM[names.family(arch)], "kernel"))
  if stem is None:
    return False
  want = converters._encoder_shapes(arch, stem.shape[2])  # pylint: disable=protected-access
  return want == {p: tuple(a.shape) for p, a in arrays.items()}


def convert_file(weights: str, out_dir: str, extra: Mapping[str, Any] | None = None, *,
                 expect_arch: str | None = None, label: str | None = None) -> dict[str, Any]:
  """A timm ImageNet ``weights`` file (.safetensors) -> the encoder's converted checkpoint
  (3 input channels) in ``out_dir``, as ``python -m smd_jax.convert --from timm`` writes
  it, plus ``extra`` metadata. The encoder is inferred from the shapes and must be
  ``expect_arch`` when given. Returns the metadata; UserError, nothing written, when the
  file is not a registered encoder's (``label`` names it)."""
  from smd_jax.convert import converters  # pylint: disable=g-import-not-at-top
  label = label or weights
  try:
    state_dict = io.read_state_dict(weights)
    # The expected encoder first: one abstract model instead of trying every registered one.
    arch = expect_arch if _fits(state_dict, expect_arch) else None
    encoder, report, arch = converters.convert_encoder(state_dict, arch, source="timm")
  except (ConversionError, ValueError, KeyError) as e:
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise UserError(f"{label} is not the weights of a timm ImageNet encoder smd_jax knows "
                    f"({first_line})") from e
  _check_arch(arch, expect_arch, label)
  arrays = converters.arrays_of(encoder, report.loaded, prefix=("encoder",))
  meta = {"source": "timm", "input": os.path.abspath(weights), "sha256": io.sha256(weights),
          "versions": {"jax": jax.__version__, "flax": flax.__version__},
          "arch": arch, "scope": "encoder", "in_channels": 3, "widened": None,
          "ignored": sorted(report.ignored), "num_arrays": len(arrays),
          "num_params": int(sum(a.size for p, a in arrays.items() if not io.is_batch_stat(p))),
          **dict(extra or {})}
  io.save_converted(out_dir, arrays, meta)
  return meta


def _fetched(hub_id: HubId, directory: str, downloaded: bool) -> Fetched:
  meta = io.read_metadata(directory)
  hub = meta.get("hub", {})
  return Fetched(directory=directory, repo_id=hub_id.repo_id,
                 revision=hub_id.revision or DEFAULT_REVISION, commit=hub.get("commit", ""),
                 filename=hub.get("filename", WEIGHTS_FILE), sha256=meta.get("sha256", ""),
                 arch=meta.get("arch", ""), downloaded=downloaded)


def fetch(hub_id: HubId | str, *, expect_arch: str | None = None) -> Fetched:
  """The converted checkpoint of a Hub model id: from the converted cache when it holds
  the revision (no request), else downloaded (`download`), converted (`convert_file`) and
  cached. ``expect_arch``: the model's encoder; other weights are a UserError.

  Every failure is a one-line UserError and leaves the converted cache unchanged.
  """
  if isinstance(hub_id, str):
    parsed = parse_hub_id(hub_id)
    if parsed is None:
      raise UserError(f"{hub_id!r} is neither a directory nor a Hub model id "
                      "(org/name[@revision]).")
    hub_id = parsed
  directory = cached(hub_id)
  if directory is not None:
    fetched = _fetched(hub_id, directory, downloaded=False)
    _check_arch(fetched.arch, expect_arch, hub_id)
    return fetched

  path = download(hub_id)
  commit = os.path.basename(os.path.dirname(path))  # .../snapshots/<commit>/model.safetensors
  revision = hub_id.revision or DEFAULT_REVISION
  repo_dir = _repo_dir(hub_id.repo_id)
  final = os.path.join(repo_dir, commit)
  if not _is_converted(final):
    os.makedirs(repo_dir, exist_ok=True)
    tmp = os.path.join(repo_dir, f".incomplete-{commit}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
      hub = {"repo_id": hub_id.repo_id, "revision": revision, "commit": commit,
             "filename": WEIGHTS_FILE}
      convert_file(path, tmp, {"hub": hub}, expect_arch=expect_arch, label=str(hub_id))
      if os.path.isdir(final) and not _is_converted(final):  # not ours: half a foreign copy
        shutil.rmtree(final, ignore_errors=True)
      try:
        os.rename(tmp, final)
      except OSError:  # another process got there first: keep theirs
        if not _is_converted(final):
          raise
    finally:
      if os.path.exists(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
  fetched = _fetched(hub_id, final, downloaded=True)
  _check_arch(fetched.arch, expect_arch, hub_id)
  if revision != commit:
    output_files.write_text(_ref_file(hub_id.repo_id, revision), commit + "\n")
  return fetched


def resolve(init_from: str, encoder: str | None) -> tuple[str, Fetched | None]:
  """``config.init_from`` -> (the converted directory to load, the Hub provenance or None
  for a local directory). ``imagenet`` is `DEFAULT_WEIGHTS` of ``encoder``."""
  if init_from.strip() == IMAGENET:
    init_from = default_repo(encoder)
  hub_id = parse_hub_id(init_from)
  if hub_id is None:
    return init_from, None
  fetched = fetch(hub_id, expect_arch=encoder)
  return fetched.directory, fetched


__all__ = ["DEFAULT_REVISION", "DEFAULT_WEIGHTS", "Fetched", "HubId", "IMAGENET",
           "PretrainedWeights", "WEIGHTS_FILE", "cache_root", "cached", "convert_file",
           "default_repo", "download", "fetch", "offline", "parse_hub_id", "resolve"]
