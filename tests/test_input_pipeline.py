"""Grain pipeline over a random-access source: sharding, shuffling, padding, resume."""

import cloudpickle
import numpy as np
import pytest


from smd_jax.data import allocator, batching, datasets, tf_example
from smd_jax.errors import UserError
from smd_jax.training import checkpoints


def fake_source(n, size=4):
  """Examples whose pixel values encode their index, plus a text id like TFDS gives."""
  out = []
  for i in range(n):
    depth = np.full((size, size), float(i + 1), np.float32)
    depth[0, 0] = np.nan
    out.append({"image": np.full((size, size, 3), i % 256, np.uint8), "depth": depth,
                "semantic": np.full((size, size), i % 40 + 1, np.int16), "scene": b"ai_001_001"})
  return out


def ids(batch):
  return [int(d) - 1 if np.isfinite(d) else -1 for d in batch["depth"][:, 1, 1]]


def test_train_batches_shapes_and_epoch_coverage():
  src = fake_source(12)
  it = iter(batching.train_dataset(src, global_batch_size=4, seed=0, num_threads=0))
  batches = [next(it) for _ in range(6)]  # two epochs
  assert set(batches[0]) == {"image", "depth", "semantic"}
  assert batches[0]["image"].shape == (4, 4, 4, 3) and batches[0]["image"].dtype == np.uint8
  assert batches[0]["depth"].dtype == np.float32 and batches[0]["semantic"].dtype == np.int16
  epoch1 = sum((ids(b) for b in batches[:3]), [])
  epoch2 = sum((ids(b) for b in batches[3:]), [])
  assert sorted(epoch1) == list(range(12)) and sorted(epoch2) == list(range(12))
  assert epoch1 != list(range(12)) and epoch1 != epoch2  # shuffled, reshuffled per epoch


def test_same_seed_same_order_other_seed_differs():
  src = fake_source(16)
  first = lambda seed: ids(next(iter(batching.train_dataset(
      src, global_batch_size=8, seed=seed, num_threads=0))))
  assert first(3) == first(3)
  assert first(3) != first(4)


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_split_the_same_global_batches(process_count):
  # Global batch t over P processes = process 0's local batch t, then process 1's, ...:
  # exactly the batch a single process reads, with each process reading its own part.
  src = fake_source(20)
  single = iter(batching.train_dataset(src, global_batch_size=8, seed=0, num_threads=0))
  shards = [iter(batching.train_dataset(src, global_batch_size=8, seed=0, process_index=p,
                                              process_count=process_count, num_threads=0))
            for p in range(process_count)]
  for _ in range(6):  # past the end of the first epoch (20 examples)
    want = ids(next(single))
    local = [ids(next(it)) for it in shards]
    assert all(len(part) == 8 // process_count for part in local)
    assert [i for part in local for i in part] == want


def test_iterator_state_resumes_exactly():
  src = fake_source(10)
  ds = batching.train_dataset(src, global_batch_size=2, seed=1, num_threads=0)
  it = iter(ds)
  for _ in range(7):
    next(it)
  state = it.get_state()
  want = [ids(next(it)) for _ in range(4)]
  it2 = iter(ds)
  it2.set_state(state)
  assert [ids(next(it2)) for _ in range(4)] == want


def test_batch_errors_are_clear():
  with pytest.raises(ValueError, match="not divisible"):
    batching.local_batch_size(6, 4)
  with pytest.raises(ValueError, match="no examples"):
    batching.train_dataset(fake_source(0), global_batch_size=4, seed=0, process_index=1,
                                 process_count=2)


def test_split_smaller_than_batch_still_batches():
  it = iter(batching.train_dataset(fake_source(3), global_batch_size=8, seed=0))
  assert sorted(set(ids(next(it)))) == [0, 1, 2]


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_every_example_once_with_padding(process_count):
  src = fake_source(7)
  per_process = []
  for p in range(process_count):
    batches = list(batching.eval_batches(src, global_batch_size=4, process_index=p,
                                               process_count=process_count))
    per_process.append(batches)
    for b in batches:
      assert b["depth"].shape[0] == 4 // process_count
      assert np.all(np.isnan(b["depth"][~b["mask"]]))  # padding counts for nothing
      assert np.all(b["semantic"][~b["mask"]] == -1)
  assert len({len(b) for b in per_process}) == 1  # same number of collective steps
  real = [i for batches in per_process for b in batches for i, m in zip(ids(b), b["mask"]) if m]
  assert sorted(real) == list(range(7))


def test_max_examples_limits_eval():
  batches = list(batching.eval_batches(fake_source(9), global_batch_size=4, max_examples=5))
  assert sum(int(b["mask"].sum()) for b in batches) == 5


def test_synthetic_generation_runs_once_and_refuses_other_config(tmp_path, monkeypatch):
  from ml_collections import config_dict
  from tfds_hypersim import synthetic

  calls = []
  monkeypatch.setattr(synthetic, "generate", lambda out, num_frames, seed: calls.append(num_frames))
  cfg = config_dict.ConfigDict({"seed": 0, "num_frames": {"train": 4, "validation": 2, "test": 0}})
  raw = str(tmp_path / "raw")
  datasets.generate_synthetic(raw, cfg)
  datasets.generate_synthetic(raw, cfg)
  assert calls == [{"test": 0, "train": 4, "validation": 2}]  # second call reuses the frames
  cfg.num_frames.train = 8
  with pytest.raises(ValueError, match="new --workdir"):
    datasets.generate_synthetic(raw, cfg)


# --------------------------------------------------------------------------
# Worker processes (data.num_workers) over a real TFDS array_record source.


@pytest.fixture(scope="module")
def tfds_source(tmp_path_factory):
  """The train split of a 16-frame, 16 px HyperSim data set built by the real builder.

  Cheap frames (gradients, frame k's blue channel and depth offset by k) instead
  of rendered ones keep the build near 3 s; every example differs.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tfds_hypersim  # pylint: disable=g-import-not-at-top
  from tfds_hypersim import synthetic  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("tfds_16px")
  yy, xx = np.mgrid[0:768, 0:1024].astype(np.float32) / 1024
  frames = synthetic.choose_frames({"train": 16})["train"]
  for k, (scene, camera, frame) in enumerate(frames):
    synthetic.write_frame(root / "raw", scene, camera, frame, {
        "color": np.stack([xx, yy, np.full_like(xx, k / 16)], -1), "depth": 1 + k + xx,
        "semantic": (k + (yy * 8).astype(int)) % 40 + 1, "entity": np.ones_like(xx)}, level=1)
  builder = tfds_hypersim.Builder(config=tfds_hypersim.hypersim_config(16),
                                  data_dir=root / "tfds", num_workers=1)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=root / "raw"))
  source = builder.as_data_source()["train"]
  assert len(source) == 16
  return source


def assert_same_batches(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert set(g) == set(w)
    for k in w:  # bitwise, NaNs included
      assert g[k].dtype == w[k].dtype and g[k].shape == w[k].shape
      assert g[k].tobytes() == w[k].tobytes(), k


def take(it, n):
  return [next(it) for _ in range(n)]


def test_worker_processes_yield_the_same_batches(tfds_source):
  # 10 batches of 4 from 16 examples: past two epoch ends (reshuffled).
  kwargs = dict(global_batch_size=4, seed=5, num_threads=1)
  want = take(iter(batching.train_dataset(tfds_source, **kwargs)), 10)
  it = iter(batching.train_dataset(tfds_source, num_workers=2, **kwargs))
  try:
    got = take(it, 10)
  finally:
    it.close()
  assert_same_batches(got, want)
  assert len({b["depth"].tobytes() for b in want}) == 10  # the check can tell batches apart


def test_worker_iterator_state_round_trips_through_a_checkpoint(tfds_source, tmp_path):
  # The trainer's path: Checkpointer.save(step, state, iterator), then restore
  # into a fresh iterator of a new pipeline, with workers or without.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top


  kwargs = dict(global_batch_size=4, seed=2, num_threads=1)
  threads = iter(batching.train_dataset(tfds_source, **kwargs))
  want = take(threads, 5)
  state_without_workers = threads.get_state()
  want += take(threads, 4)
  state = {"x": jnp.zeros(2)}
  it = iter(batching.train_dataset(tfds_source, num_workers=2, **kwargs))
  try:
    assert_same_batches(take(it, 5), want[:5])
    # The same state as without workers: checkpoints move between num_workers values.
    assert it.get_state() == state_without_workers
    ckpt = checkpoints.Checkpointer(str(tmp_path), save_interval_steps=1)
    assert ckpt.save(5, state, it)
    ckpt.close()
    assert_same_batches(take(it, 2), want[5:7])  # reading on does not change the saved position
  finally:
    it.close()
  for num_workers in (2, 0):
    fresh = iter(batching.train_dataset(tfds_source, num_workers=num_workers, **kwargs))
    try:
      ckpt = checkpoints.Checkpointer(str(tmp_path))
      _, step = ckpt.restore(state, fresh)
      ckpt.close()
      assert step == 5
      assert_same_batches(take(fresh, 4), want[5:9])
    finally:
      fresh.close()


@pytest.mark.parametrize("views", [False, True])
def test_array_source_decodes_bit_equal_to_tfds(tfds_source, monkeypatch, views):
  # views: the stored bytes read as views into each record (what data sets with
  # large examples use, datasets.VIEWS_FROM_BYTES), else with the protobuf parse.
  read = []
  monkeypatch.setattr(tf_example, "bytes_features",
                      lambda *a, f=tf_example.bytes_features: read.append(f(*a)) or read[-1])
  fast = datasets.array_source(tfds_source)
  assert fast is not tfds_source and len(fast) == len(tfds_source)
  assert not fast.views  # 16 px
  fast.views = views
  want = [datasets.select_arrays(tfds_source[i]) for i in range(len(fast))]
  assert_same_batches([fast[i] for i in range(len(fast))], want)
  assert len(read) == (len(fast) if views else 0) and None not in read
  # As worker processes get it (grain pickles the pipeline with cloudpickle).
  again = cloudpickle.loads(cloudpickle.dumps(fast))
  assert_same_batches([again[i] for i in range(len(again))], want)
  other = fake_source(3)
  assert datasets.array_source(other) is other  # not a TFDS source: left as it is


def test_decoders_keep_freed_memory_in_every_process(tfds_source, monkeypatch):
  calls = []
  monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1))
  fast = datasets.array_source(tfds_source)
  assert calls == [1]
  cloudpickle.loads(cloudpickle.dumps(fast))  # as a worker process gets it
  assert calls == [1, 1]


def test_keep_freed_memory_sets_glibc_thresholds(monkeypatch):
  class Libc:
    calls = []

    def mallopt(self, param, value):
      self.calls.append((param, value))
      return 1

  monkeypatch.setattr(allocator, "_glibc", Libc)
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)  # tests/conftest.py sets it
  allocator.keep_freed_memory.cache_clear()
  try:
    assert allocator.keep_freed_memory() and allocator.keep_freed_memory()
    # glibc's malloc.h: M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1 (once per process).
    assert sorted(Libc.calls) == [(-3, 32 * 2**20), (-1, 64 * 2**20)]
    # A process started with glibc's thresholds as tunables (the commands' 4 GiB trim
    # threshold): kept, and not lowered to 64 MiB.
    for tunables in ("glibc.malloc.hugetlb=1:glibc.malloc.trim_threshold=4294967296",
                     "glibc.malloc.mmap_threshold=33554432"):
      allocator.keep_freed_memory.cache_clear()
      monkeypatch.setenv("GLIBC_TUNABLES", tunables)
      assert allocator.keep_freed_memory() and len(Libc.calls) == 2
    allocator.keep_freed_memory.cache_clear()
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")  # huge pages only
    assert allocator.keep_freed_memory() and len(Libc.calls) == 4
    allocator.keep_freed_memory.cache_clear()
    monkeypatch.setenv("SMD_KEEP_FREED_MEMORY", "0")
    assert not allocator.keep_freed_memory() and len(Libc.calls) == 4
  finally:
    allocator.keep_freed_memory.cache_clear()


def _example(**features):
  """A serialized tf.train.Example: bytes values (a list: several), floats or ints."""
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

  example = tf_example_pb2.Example()
  for name, value in features.items():
    feature = example.features.feature[name]
    if isinstance(value, float):
      feature.float_list.value.append(value)
    elif isinstance(value, int):
      feature.int64_list.value.append(value)
    else:
      feature.bytes_list.value.extend(value if isinstance(value, list) else [value])
  return example.SerializeToString()


def _length_delimited(number: int, payload: bytes) -> bytes:
  """Protobuf field `number` holding `payload` (tag byte, base-128 length, payload)."""
  out, size = bytearray([number << 3 | 2]), len(payload)
  while size >= 0x80:
    out.append(size & 0x7F | 0x80)
    size >>= 7
  return bytes(out + bytearray([size])) + payload


def _features(record: bytes) -> bytes:
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  return tf_example_pb2.Example.FromString(record).features.SerializeToString()


ARRAYS = {"image": bytes(range(256)) * 3, "depth": b"\x00\x00\xc0\x7f" * 40, "semantic": b""}


def test_bytes_features_are_views_of_what_protobuf_parses():
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

  record = _example(scene=b"ai_001_001", frame=7, **ARRAYS, other=0.5)
  got = tf_example.bytes_features(record, list(ARRAYS))
  parsed = tf_example_pb2.Example.FromString(record).features.feature
  assert set(got) == set(ARRAYS)
  for name, view in got.items():
    assert isinstance(view, memoryview) and view.obj is record  # no copy
    assert bytes(view) == parsed[name].bytes_list.value[0] == ARRAYS[name]


@pytest.mark.parametrize("record", [
    _example(image=ARRAYS["image"], depth=ARRAYS["depth"]),  # "semantic" missing
    _example(**dict(ARRAYS, image=[b"a", b"b"])),  # two values
    _example(**dict(ARRAYS, image=1.0)),  # not bytes
    _example(**ARRAYS) + _example(image=b"later"),  # two messages: protobuf merges them
    _length_delimited(1, _features(_example(**ARRAYS)) + _features(_example(image=b"later"))),
    _example(**ARRAYS)[:-5],  # truncated
    _example(**ARRAYS) + b"\x08\x01",  # another wire type (varint field 1)
], ids=["missing", "two_values", "float", "merged", "twice_in_map", "truncated", "varint"])
def test_records_laid_out_otherwise_are_left_to_protobuf(record):
  assert tf_example.bytes_features(record, list(ARRAYS)) is None


def test_a_record_left_to_protobuf_decodes_as_protobuf_says():
  class Records:
    data_source = [_example(**ARRAYS) + _example(image=b"later"), _length_delimited(
        1, _features(_example(**ARRAYS)) + _features(_example(image=b"later")))]
  layout = {"image": (np.dtype(np.uint8), (5,), "bytes")}
  arrays = datasets._RecordArrays(Records(), layout)  # pylint: disable=protected-access
  arrays.views = True
  for i in range(2):  # the last value wins
    np.testing.assert_array_equal(arrays[i]["image"], np.frombuffer(b"later", np.uint8))


@pytest.mark.parametrize("size, views", [(64, False), (256, True)])
def test_large_examples_are_read_as_views(size, views):
  class Records:
    data_source = []
  layout = {"image": (np.dtype(np.uint8), (size, size, 3), "bytes"),
            "depth": (np.dtype(np.float32), (size, size), "bytes")}
  assert datasets._RecordArrays(Records(), layout).views == views  # pylint: disable=protected-access


def test_bad_num_workers_or_state_is_a_user_error():
  with pytest.raises(UserError, match="num_workers=-1"):
    batching.train_dataset(fake_source(4), global_batch_size=2, seed=0, num_workers=-1)
  it = iter(batching.train_dataset(fake_source(4), global_batch_size=2, seed=0,
                                         num_workers=2))  # no worker starts before next()
  with pytest.raises(UserError, match="Cannot resume"):
    it.set_state({"next_index_in_cycle": 1})
