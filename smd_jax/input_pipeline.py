"""Input pipeline: TFDS array_record data sources read with grain.

The pipeline is variant-agnostic: it yields uint8 images, metric depth with NaN
holes and raw semantic labels. Everything model-specific (semantic input
transforms, depth normalisation) happens on device inside the jitted step.

Each JAX process reads its own disjoint shard of a split and yields its local
part of the global batch; `parallel.to_global` assembles the global array.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import weakref
import zlib
from typing import Any, Iterator, Mapping, Sequence

import grain
import numpy as np
from absl import flags
from absl import logging

from smd_jax.errors import UserError

# The features the model side consumes; text ids stay on the host.
ARRAY_FEATURES = ("image", "depth", "semantic")
SPLITS = ("train", "validation", "test")


def select_arrays(example: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {k: np.asarray(example[k]) for k in ARRAY_FEATURES}


class _RecordArrays:
  """`select_arrays(source[i])` of a TFDS array_record source, decoded directly.

  Reads the same records and decodes them as TFDS does (PNG with PIL, zlib +
  `np.frombuffer`), so the arrays are bit-equal (tests/test_input_pipeline.py),
  but skips TFDS's generic feature code, Python that holds the GIL: at 64 px an
  example then costs 0.50 ms of CPU instead of 0.66 ms (benchmarks/pipeline.py).
  """

  def __init__(self, source):
    self.records = source.data_source  # raw serialized tf.train.Example bytes
    features = source.dataset_info.features
    self.tensors = {k: (features[k].np_dtype, tuple(features[k].shape))
                    for k in ("depth", "semantic")}

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
    import PIL.Image  # pylint: disable=g-import-not-at-top

    feature = tf_example_pb2.Example.FromString(self.records[index]).features.feature
    png = io.BytesIO(feature["image"].bytes_list.value[0])
    with PIL.Image.open(png, formats=("PNG",)) as image:  # no format sniffing
      out = {"image": np.asarray(image, np.uint8)}
    for k, (dtype, shape) in self.tensors.items():
      raw = zlib.decompress(feature[k].bytes_list.value[0])
      out[k] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return out


def array_source(source: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
  """`source` with a faster decoder where it is a HyperSim TFDS array_record source.

  Any other source (a list, another format, custom TFDS decoders) is returned
  unchanged: only the layout `_RecordArrays` decodes (RGB uint8 PNG image,
  zlib-encoded depth and semantic tensors) is taken over.
  """
  features = getattr(getattr(source, "dataset_info", None), "features", None)
  try:
    image, depth, semantic = (features[k] for k in ARRAY_FEATURES)
    ours = (getattr(source, "decoders", 1) is None
            and str(getattr(source, "deserialize_method", "")).endswith("DESERIALIZE_AND_DECODE")
            and image.encoding_format == "png" and image.np_dtype == np.uint8
            and tuple(image.shape)[-1:] == (3,) and None not in image.shape
            and all(str(getattr(f, "_encoding", "")).endswith("ZLIB") and None not in f.shape
                    for f in (depth, semantic)))
  except (TypeError, KeyError, AttributeError):
    return source
  return _RecordArrays(source) if ours else source


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size % process_count:
    raise ValueError(
        f"batch_size={global_batch_size} is not divisible by the number of JAX processes "
        f"({process_count}); choose a multiple of {process_count}.")
  return global_batch_size // process_count


def train_dataset(source: Sequence[Mapping[str, Any]], *, global_batch_size: int, seed: int,
                  process_index: int = 0, process_count: int = 1, num_threads: int = 4,
                  prefetch_batches: int = 2, num_workers: int = 0) -> grain.IterDataset:
  """Endless, shuffled (reshuffled every epoch), batched stream of local batches.

  Args:
    source: random-access source of examples (e.g. a `tfds.data_source` split).
    global_batch_size: examples per step over all processes.
    seed: shuffle seed; the same seed gives the same order on every run.
    process_index, process_count: this process's shard of the source.
    num_threads: grain reader threads (in each worker process when `num_workers` > 0).
    prefetch_batches: batches read ahead (per worker process when `num_workers` > 0).
    num_workers: worker processes that read and decode batches; 0 reads in this
      process. The batches and their order are the same for any value.

  Returns:
    An `IterDataset` whose iterator yields dicts of numpy arrays
    `image` [b,H,W,3] uint8, `depth` [b,H,W] float32, `semantic` [b,H,W] int16,
    with b = global_batch_size / process_count. Its iterator state is
    checkpointable (`get_state`/`set_state`).
  """
  if num_workers < 0:
    raise UserError(f"data.num_workers={num_workers}: use 0 (read in the training process) "
                    "or a number of worker processes.")
  batch = local_batch_size(global_batch_size, process_count)
  if not len(source):
    raise ValueError("The training split has no examples.")
  # One global order of examples, cut into process-sized chunks: global batch t is
  # chunks t*P .. t*P+P-1, and process p reads only chunk t*P+p. The global batches
  # are thus the same for any number of processes (a run can resume on another
  # topology), and each process reads just its own examples.
  ds = grain.MapDataset.source(array_source(source)).shuffle(seed=seed).repeat()
  ds = ds.map(select_arrays)
  ds = ds.batch(batch, drop_remainder=True)[process_index::process_count]
  # grain runs at most prefetch_buffer_size reads at once: a smaller buffer than
  # num_threads would leave threads idle (docs/benchmarks.md, input pipeline).
  read = grain.ReadOptions(num_threads=num_threads,
                           prefetch_buffer_size=max(prefetch_batches, num_threads))
  if not num_workers:
    return ds.to_iter_dataset(read)
  return _WorkerBatches(ds, read, grain.MultiprocessingOptions(
      num_workers=num_workers, per_worker_buffer_size=max(1, prefetch_batches)))


class _WorkerBatches(grain.IterDataset):
  """`batches` read by worker processes, with the in-process pipeline's iterator state.

  The per-example Python (record parsing, grain's map and batch) holds the GIL,
  so threads alone top out near one core; processes do not. Worker w reads batches w, w+W, ... and grain interleaves them
  round-robin: the same batches in the same order as without workers. grain
  starts workers with "spawn", never fork, so they are safe next to JAX's
  threads in this process.

  grain's own state for this (per-worker positions) differs from the in-process
  one; ours is the in-process one, {"next_index": batches read}, so a checkpoint
  resumes under any `num_workers`, older checkpoints included.
  """

  def __init__(self, batches: grain.MapDataset, read: grain.ReadOptions,
               workers: grain.MultiprocessingOptions):
    super().__init__(batches.to_iter_dataset(read))
    self._batches, self._read, self._workers = batches, read, workers

  def __iter__(self) -> grain.DatasetIterator:
    return _WorkerBatchesIterator(self._batches, self._read, self._workers)


class _WorkerBatchesIterator(grain.DatasetIterator):

  def __init__(self, batches, read, workers):
    super().__init__()
    self._batches, self._read, self._workers = batches, read, workers
    self._next_index = 0
    # grain's iterator over the worker processes, while they run. Started on first
    # use, so that a restore starts workers once.
    self._running: list[grain.DatasetIterator] = []

  def start_prefetch(self) -> None:
    if not self._running:
      _mark_flags_parsed()
      ds = self._batches[self._next_index:].to_iter_dataset(self._read)
      self._running.append(iter(ds.mp_prefetch(self._workers)))
      # Also stopped at interpreter exit, while the modules it needs still exist:
      # one left to shutdown leaks shared memory and prints tracebacks.
      self._stop = weakref.finalize(self, _stop_workers, self._running)
    self._running[0].start_prefetch()

  def __next__(self):
    self.start_prefetch()
    # Copied out of the workers' shared memory (~0.1 ms per MB): the segment is
    # freed now, not whenever the last array aliasing it (a zero-copy JAX
    # array, say) goes, which at interpreter exit leaks it with tracebacks.
    batch = {k: np.array(v) for k, v in next(self._running[0]).items()}
    self._next_index += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"next_index": self._next_index}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if set(state) != {"next_index"}:
      raise UserError(f"Cannot resume the training data iterator from the state {state}.")
    if self._running:
      self._stop()
    self._next_index = int(state["next_index"])

  def close(self) -> None:
    if self._running:
      self._stop()
    super().close()


def _stop_workers(running: list) -> None:
  while running:
    running.pop().close()


def _mark_flags_parsed() -> None:
  # grain reads its absl flags (worker profiling) when it starts workers; outside
  # an absl app (tests, notebooks, benchmarks) nothing parsed them, and their
  # defaults are what we want.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


_PAD_VALUES = {"depth": np.nan, "semantic": -1}  # both mean "invalid" everywhere


def pad_batch(examples: list[dict[str, np.ndarray]], size: int,
              template: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Stacks `examples` and pads to `size` with examples that count for nothing.

  Padding copies `template`'s shapes and dtypes with NaN depth and label -1, and
  `mask` marks the real examples, so pixel-pooled sums are unchanged by padding.
  """
  out = {}
  for k, t in template.items():
    pad = np.full((size - len(examples),) + t.shape, _PAD_VALUES.get(k, 0), t.dtype)
    out[k] = np.concatenate([np.stack([e[k] for e in examples]), pad]) if examples else pad
  out["mask"] = np.arange(size) < len(examples)
  return out


def eval_batches(source: Sequence[Mapping[str, Any]], *, global_batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 max_examples: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over a split in order, every example exactly once.

  Yields local batches of fixed size (the last ones padded, see `pad_batch`).
  Every process yields the same number of batches, as collective evaluation
  steps need, even where its shard runs out first.
  """
  batch = local_batch_size(global_batch_size, process_count)
  source = array_source(source)  # the training pipeline's decoder, bit-equal to TFDS's
  n = len(source) if max_examples is None else min(len(source), max_examples)
  indices = np.arange(n)[process_index::process_count]
  per_process = -(-n // process_count)
  template = select_arrays(source[0])
  for start in range(0, per_process, batch):
    chunk = indices[start:start + batch]
    yield pad_batch([select_arrays(source[int(i)]) for i in chunk], batch, template)


# --------------------------------------------------------------------------
# Data set preparation (build from raw HyperSim or from procedural frames).


@dataclasses.dataclass(frozen=True)
class DataPaths:
  data_dir: str  # TFDS data_dir (array_record shards)
  manual_dir: str  # raw HyperSim scene folders


def resolve_paths(data_config, workdir: str) -> DataPaths:
  """Where the TFDS shards and the raw frames live for this config.

  A synthetic data set lives in the workdir unless paths are given, so the demo
  needs nothing outside it.
  """
  if data_config.synthetic.enabled:
    base = os.path.join(workdir, "data")
    data_dir = data_config.get("data_dir") or os.path.join(base, "tfds")
    manual_dir = data_config.get("manual_dir") or os.path.join(base, "raw")
  else:
    data_dir = data_config.get("data_dir") or os.path.expanduser("~/tensorflow_datasets")
    manual_dir = data_config.get("manual_dir") or os.path.join(data_dir, "downloads", "manual")
  return DataPaths(os.path.abspath(os.path.expanduser(data_dir)),
                   os.path.abspath(os.path.expanduser(manual_dir)))


def generate_synthetic(manual_dir: str, synthetic_config) -> None:
  """Writes the procedural raw frames once; a marker file makes it idempotent.

  The marker records what was generated, so a workdir whose frames came from
  another synthetic config is reported instead of silently reused.
  """
  from tfds_hypersim import synthetic  # pylint: disable=g-import-not-at-top

  counts = {s: int(synthetic_config.num_frames[s]) for s in sorted(synthetic_config.num_frames)}
  wanted = json.dumps({"num_frames": counts, "seed": int(synthetic_config.seed)}, sort_keys=True)
  marker = os.path.join(manual_dir, ".synthetic_complete")
  if os.path.exists(marker):
    with open(marker) as f:
      found = f.read().strip()
    if found != wanted:
      raise ValueError(
          f"{manual_dir} holds procedural frames generated with {found}, but the config asks "
          f"for {wanted}. Use a new --workdir (or delete {os.path.dirname(manual_dir)}).")
    return
  logging.info("Generating procedural HyperSim-format frames %s in %s", counts, manual_dir)
  os.makedirs(manual_dir, exist_ok=True)
  synthetic.generate(manual_dir, num_frames=counts, seed=int(synthetic_config.seed))
  with open(marker, "w") as f:
    f.write(wanted + "\n")


def _built_resolutions(data_dir: str, config_name: str) -> list[int]:
  """Resolutions at which `data_dir` holds the `hypersim` data set with `config_name`'s
  other settings (config names are "res<N>" plus a suffix for non-default settings)."""
  root = os.path.join(data_dir, "hypersim")
  suffix = re.sub(r"^res\d+", "", config_name)
  found = []
  for name in os.listdir(root) if os.path.isdir(root) else []:
    match = re.fullmatch(r"res(\d+)" + re.escape(suffix), name)
    if match and os.listdir(os.path.join(root, name)):
      found.append(int(match.group(1)))
  return sorted(found)


def _not_built_error(paths: DataPaths, config_name: str, resolution: int,
                     problem: str) -> UserError:
  built = _built_resolutions(paths.data_dir, config_name)
  hint = (f" {paths.data_dir} holds the data set at resolution {', '.join(map(str, built))}: "
          f"set --config.data.resolution={built[0]}, or build {resolution} from raw frames."
          if built else "")
  return UserError(
      f"{problem}, and no data set is built at resolution {resolution} in {paths.data_dir}."
      f"{hint} Set --config.data.manual_dir to the folder holding the ai_VVV_NNN scene "
      "folders (docs/data.md) or --config.data.data_dir to a built data set.")


def check_raw_frames(paths: DataPaths, config_name: str, resolution: int) -> None:
  """UserError unless `paths.manual_dir` holds HyperSim scene folders to build from."""
  if not os.path.isdir(paths.manual_dir):
    raise _not_built_error(paths, config_name, resolution,
                           f"No raw HyperSim frames at {paths.manual_dir}")
  if not any(name.startswith("ai_") for name in os.listdir(paths.manual_dir)):
    raise _not_built_error(paths, config_name, resolution,
                           f"{paths.manual_dir} holds no HyperSim scene folders (ai_VVV_NNN)")


def load_data_sources(data_config, workdir: str, *, build: bool = True) -> dict[str, Sequence]:
  """Random-access sources for each available split of the HyperSim data set.

  Builds the TFDS data set first when `build` (and it is not built yet); with a
  `synthetic` config, generates the raw frames before that. Raises `UserError`
  (before writing anything) when there is neither a built data set at the
  config's resolution nor raw frames to build it from.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tfds_hypersim  # pylint: disable=g-import-not-at-top

  paths = resolve_paths(data_config, workdir)
  if data_config.synthetic.enabled and build:
    generate_synthetic(paths.manual_dir, data_config.synthetic)
  resolution = int(data_config.resolution)
  builder = tfds_hypersim.Builder(config=tfds_hypersim.hypersim_config(
      resolution, data_config.get("split_scheme", "semantic_md"),
      data_config.get("depth_type", "distance")), data_dir=paths.data_dir)
  if not builder.is_prepared():
    name = builder.builder_config.name
    if not build:
      raise _not_built_error(paths, name, resolution, "The data set is not built yet")
    check_raw_frames(paths, name, resolution)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=paths.manual_dir))
  return dict(builder.as_data_source())
