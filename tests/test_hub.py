"""ImageNet weights by Hugging Face Hub id (smd_jax/convert/hub.py) against a fake Hub.

The fake Hub is an http.server on 127.0.0.1 that answers what
``huggingface_hub.hf_hub_download`` asks (HEAD then GET on
``/<org>/<name>/resolve/<revision>/<file>`` with ``X-Repo-Commit`` and ``ETag``;
``X-Error-Code`` for a missing repository, revision or file) and counts the requests.
It serves safetensors files made here under timm's names from a tiny EfficientNet (the
real class at small multipliers), so converting needs no torch and no big arrays. The
expected arrays are built alongside the file (our path -> our layout), not by the
converter.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from flax import nnx
from huggingface_hub import constants as hf_constants
from safetensors import numpy as st_numpy

from smd_jax import semantics
from smd_jax.convert import __main__ as convert_cli, converters, core, hub, io
from smd_jax.errors import UserError
from smd_jax.models import efficientnet, registry
from smd_jax.training import steps as steps_lib, sweep

TINY = "tiny_efficientnet"
REPO = "timm/tiny_efficientnet.fake_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PAPER = os.path.join(ROOT, "configs", "paper")
# timm 0.9.2's default pretrained tags (efficientnet.py:952-963, resnet.py:648-650).
DOCUMENTED = {"efficientnet_b2": "timm/efficientnet_b2.ra_in1k",
              "efficientnet_b3": "timm/efficientnet_b3.ra2_in1k",
              "efficientnet_b4": "timm/efficientnet_b4.ra2_in1k",
              "resnet50": "timm/resnet50.a1_in1k"}
ROWS = {"unet_effnet_b2": "efficientnet_b2", "unet_effnet_b3": "efficientnet_b3",
        "unet_effnet_b4": "efficientnet_b4", "unet_resnet50": "resnet50",
        "unet_l1": "efficientnet_b4", "unet_1hot40": "efficientnet_b4",
        "deeplab_l1": "efficientnet_b4"}


class FakeHub:
  """``repos``: repo id -> (commit, {file name: bytes}); ``requests``: (method, path)."""

  def __init__(self):
    self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}
    self.requests: list[tuple[str, str]] = []
    hub_ = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):  # quiet
        pass

      def do_HEAD(self):  # noqa: N802
        hub_.answer(self, body=False)

      def do_GET(self):  # noqa: N802
        hub_.answer(self, body=True)

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
    threading.Thread(target=self.server.serve_forever, daemon=True).start()

  def answer(self, handler, body: bool) -> None:
    self.requests.append((handler.command, handler.path))
    parts = handler.path.split("?")[0].strip("/").split("/")
    headers, status, data = {}, 200, b""
    if len(parts) != 5 or parts[2] != "resolve" or f"{parts[0]}/{parts[1]}" not in self.repos:
      status, headers["X-Error-Code"] = 401, "RepoNotFound"  # what the real Hub answers
    else:
      commit, files = self.repos[f"{parts[0]}/{parts[1]}"]
      if parts[3] not in ("main", commit):
        status, headers["X-Error-Code"] = 404, "RevisionNotFound"
      elif parts[4] not in files:
        status, headers["X-Error-Code"] = 404, "EntryNotFound"
        headers["X-Repo-Commit"] = commit
      else:
        data = files[parts[4]]
        headers.update({"X-Repo-Commit": commit,
                        "ETag": f'"{hashlib.sha256(data).hexdigest()}"'})
    handler.send_response(status)
    for key, value in headers.items():
      handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    if body:
      handler.wfile.write(data)

  def close(self):
    self.server.shutdown()
    self.server.server_close()


def timm_weights(seed: int = 0, arch: str = TINY):
  """(safetensors bytes under timm's names with a classifier, our path -> expected array)
  for a random ``arch`` encoder."""
  encoder = registry.ENCODERS[arch](in_channels=3, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(seed)
  state_dict, expected = {}, {}
  torch_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                "var": "running_var"}
  for path, variable in core.model_variables(encoder).items():
    value = rng.normal(size=variable.get_value().shape).astype(np.float32)
    if path[-1] == "var":
      value = np.abs(value) + 0.5
    expected[("encoder",) + tuple(path)] = value
    if path[-1] == "kernel":  # ours HWIO, PyTorch OIHW
      value = np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    name = ".".join(str(p) for p in path[:-1])
    state_dict[f"{name}.{torch_leaf[path[-1]]}"] = value
    if path[-1] == "mean":
      state_dict[f"{name}.num_batches_tracked"] = np.array(7, np.int64)
  state_dict.update({"conv_head.weight": np.zeros((32, 8, 1, 1), np.float32),
                     "classifier.weight": np.zeros((10, 32), np.float32),
                     "classifier.bias": np.zeros(10, np.float32)})
  return st_numpy.save(state_dict), expected


@pytest.fixture
def tiny(monkeypatch):
  monkeypatch.setitem(registry.ENCODERS, TINY,
                      functools.partial(efficientnet.EfficientNet, 0.25, 0.1))
  return TINY


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
  """A running FakeHub that huggingface_hub and smd_jax use, with fresh caches."""
  server = FakeHub()
  monkeypatch.setenv("HF_ENDPOINT", server.url)
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
  monkeypatch.setenv("SMD_JAX_CACHE", str(tmp_path / "smd"))
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
  yield server
  server.close()


def _assert_one_line(error: UserError, *fragments: str) -> None:
  message = str(error)
  assert "\n" not in message, message
  for fragment in fragments:
    assert fragment in message, message


def _converted_dirs(tmp_path) -> list[str]:
  root = tmp_path / "smd" / "converted"
  return sorted(str(p.relative_to(root)) for p in root.glob("*/*")) if root.exists() else []


def test_parse_hub_id(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "runs" / "converted").mkdir(parents=True)
  assert hub.parse_hub_id("timm/efficientnet_b4.ra2_in1k") == hub.HubId(
      "timm/efficientnet_b4.ra2_in1k", None)
  assert hub.parse_hub_id(f"timm/resnet50.a1_in1k@{COMMIT}") == hub.HubId(
      "timm/resnet50.a1_in1k", COMMIT)
  assert hub.parse_hub_id("org/name@refs/pr/1").revision == "refs/pr/1"
  for path in ("runs/converted", "./a/b", "/abs/dir", "~/a", "a/b/c", "imagenet", "", "a/b@"):
    assert hub.parse_hub_id(path) is None, path


def test_download_convert_cache_and_offline(tiny, fake_hub, tmp_path, monkeypatch):
  data, expected = timm_weights(seed=1)
  fake_hub.repos[REPO] = (COMMIT, {hub.WEIGHTS_FILE: data})
  url = f"/{REPO}/resolve/main/{hub.WEIGHTS_FILE}"

  # First use: HEAD + GET, converted into the cache, provenance recorded.
  fetched = hub.fetch(REPO, expect_arch=tiny)
  assert fake_hub.requests == [("HEAD", url), ("GET", url)]
  assert fetched.downloaded and fetched.arch == tiny and fetched.commit == COMMIT
  assert fetched.sha256 == hashlib.sha256(data).hexdigest()
  assert fetched.directory == str(tmp_path / "smd" / "converted" / "timm--tiny_efficientnet"
                                  ".fake_in1k" / COMMIT)
  arrays, meta = io.load_converted(fetched.directory)
  assert meta["hub"] == {"repo_id": REPO, "revision": "main", "commit": COMMIT,
                         "filename": "model.safetensors"}
  assert set(arrays) == set(expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(arrays[path], value, err_msg=str(path))
  assert _converted_dirs(tmp_path) == [f"timm--tiny_efficientnet.fake_in1k/{COMMIT}",
                                       "timm--tiny_efficientnet.fake_in1k/refs"]

  # Later runs: the cache answers, no request (main, and the commit itself).
  for spec in (REPO, f"{REPO}@{COMMIT}"):
    again = hub.fetch(spec, expect_arch=tiny)
    assert not again.downloaded and again.directory == fetched.directory
    assert again.commit == COMMIT and again.sha256 == fetched.sha256
  assert len(fake_hub.requests) == 2

  # Offline: from the converted cache; with that gone, from huggingface_hub's cache.
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  assert hub.fetch(REPO).directory == fetched.directory
  monkeypatch.setenv("SMD_JAX_CACHE", str(tmp_path / "smd2"))
  rebuilt = hub.fetch(REPO, expect_arch=tiny)
  assert rebuilt.downloaded and rebuilt.commit == COMMIT
  assert rebuilt.directory.startswith(str(tmp_path / "smd2"))
  assert len(fake_hub.requests) == 2

  # What a killed conversion could leave (a temporary or a half directory) is no cache.
  half = tmp_path / "smd2" / "converted" / "timm--tiny_efficientnet.fake_in1k" / COMMIT
  (half / io.METADATA_FILE).unlink()
  (half.parent / f".incomplete-{COMMIT}-1-x" / "state").mkdir(parents=True)
  assert hub.cached(hub.HubId(REPO)) is None
  assert hub.fetch(REPO, expect_arch=tiny).downloaded and hub.cached(hub.HubId(REPO))
  np.testing.assert_array_equal(io.load_converted(str(half))[0][("encoder", "bn1", "var")],
                                expected[("encoder", "bn1", "var")])

  # Offline with neither cache: one line saying what to run.
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_empty"))
  monkeypatch.setenv("SMD_JAX_CACHE", str(tmp_path / "smd3"))
  with pytest.raises(UserError) as error:
    hub.fetch(REPO)
  _assert_one_line(error.value, REPO, "HF_HUB_OFFLINE",
                   f"python -m smd_jax.convert --from timm {REPO}", "init_from")
  assert len(fake_hub.requests) == 2
  assert not (tmp_path / "smd3" / "converted" / "timm--tiny_efficientnet.fake_in1k").exists()


def test_cli_from_hub_equals_cli_from_file(tiny, fake_hub, tmp_path, capsys):
  data, _ = timm_weights(seed=2)
  fake_hub.repos[REPO] = (COMMIT, {hub.WEIGHTS_FILE: data})
  weights = tmp_path / "model.safetensors"
  weights.write_bytes(data)
  assert convert_cli.main(["--from", "timm", "--arch", tiny, str(weights), "--out",
                           str(tmp_path / "file")]) == 0
  # Pre-fetch into the init_from cache (no --out), then again: already cached.
  assert convert_cli.main(["--from", "timm", "--arch", tiny, REPO]) == 0
  assert "downloaded and converted" in capsys.readouterr().out
  assert convert_cli.main(["--from", "timm", "--arch", tiny, REPO]) == 0
  assert "already cached" in capsys.readouterr().out
  assert len(fake_hub.requests) == 2
  assert convert_cli.main(["--from", "timm", "--arch", tiny, f"{REPO}@main", "--out",
                           str(tmp_path / "hub_out")]) == 0
  from_file, file_meta = io.load_converted(str(tmp_path / "file"))
  for directory in (hub.cached(hub.HubId(REPO)), str(tmp_path / "hub_out")):
    arrays, meta = io.load_converted(directory)
    assert set(arrays) == set(from_file)
    for path, value in from_file.items():
      np.testing.assert_array_equal(arrays[path], value, err_msg=str(path))
    assert meta["hub"]["commit"] == COMMIT and meta["sha256"] == file_meta["sha256"]
    assert meta["arch"] == tiny and meta["ignored"] == file_meta["ignored"]


@pytest.mark.parametrize("spec, expect_arch, fragments", [
    ("timm/no_such_model", None, ["No model repository timm/no_such_model", "check the id"]),
    (f"{REPO}@v9", None, ["has no revision 'v9'"]),
    ("timm/no_weights", None, ["has no model.safetensors"]),
    ("timm/not_an_encoder", None, ["is not the weights of a timm ImageNet encoder"]),
    # Weights of another (registered) encoder than the model's.
    (REPO, "wide_efficientnet", ["holds tiny_efficientnet weights, but the model's encoder is "
                                 "wide_efficientnet", "timm/wide_efficientnet.fake_in1k"]),
])
def test_bad_ids_are_one_line_errors_and_write_nothing(spec, expect_arch, fragments, tiny,
                                                       fake_hub, tmp_path, monkeypatch):
  # Only tiny encoders registered: inferring the file's encoder stays fast.
  monkeypatch.setattr(registry, "ENCODERS", {
      TINY: registry.ENCODERS[TINY],
      "wide_efficientnet": functools.partial(efficientnet.EfficientNet, 0.5, 0.1)})
  monkeypatch.setitem(hub.DEFAULT_WEIGHTS, "wide_efficientnet",
                      hub.PretrainedWeights("timm/wide_efficientnet.fake_in1k"))
  data, _ = timm_weights()
  fake_hub.repos[REPO] = (COMMIT, {hub.WEIGHTS_FILE: data})
  fake_hub.repos["timm/no_weights"] = (COMMIT, {"pytorch_model.bin": b"x"})
  fake_hub.repos["timm/not_an_encoder"] = (COMMIT, {hub.WEIGHTS_FILE: st_numpy.save(
      {"fc.weight": np.zeros((2, 3), np.float32)})})
  with pytest.raises(UserError) as error:
    hub.fetch(spec, expect_arch=expect_arch)
  _assert_one_line(error.value, *fragments)
  assert _converted_dirs(tmp_path) == []


def test_unreachable_hub_is_one_line(fake_hub, tmp_path, monkeypatch):
  fake_hub.close()  # nothing listens on that port any more
  # huggingface_hub retries a refused connection 5 times with 1-8 s pauses; skip the pauses.
  monkeypatch.setattr(time, "sleep", lambda seconds: None)
  with pytest.raises(UserError) as error:
    hub.fetch(REPO)
  _assert_one_line(error.value, "cannot be reached", f"python -m smd_jax.convert --from timm "
                   f"{REPO}")
  assert _converted_dirs(tmp_path) == []


def test_cli_offline_without_cache_subprocess(fake_hub, tmp_path):
  """HF_HUB_OFFLINE=1 set before anything is imported, as a user sets it: one line, exit 1,
  no request."""
  env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "smd_jax.convert", "--from", "timm", REPO],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "HF_HUB_OFFLINE" in lines[0]
  assert fake_hub.requests == []


@pytest.mark.parametrize("row", sorted(ROWS))
def test_paper_rows_default_to_the_authors_weights(row):
  config = sweep.load_config_file(os.path.join(PAPER, f"{row}.py"))
  assert config.model.encoder == ROWS[row]
  assert config.init_from == hub.IMAGENET
  assert hub.default_repo(config.model.encoder) == DOCUMENTED[ROWS[row]]
  # The image normalisation is the one of those weights (timm's pretrained_cfg).
  weights = hub.DEFAULT_WEIGHTS[config.model.encoder]
  assert weights.mean == semantics.IMAGENET_MEAN == (0.485, 0.456, 0.406)
  assert weights.std == semantics.IMAGENET_STD == (0.229, 0.224, 0.225)


def test_demo_and_empty_init_from_need_no_network():
  from configs import default  # pylint: disable=g-import-not-at-top
  assert not default.get_config().init_from
  config = sweep.load_config_file(os.path.join(PAPER, "unet_l1.py"))
  config.init_from = ""  # --config.init_from=
  assert converters.maybe_init_from(None, config, "/nonexistent") is None


def test_paper_row_init_from_widens_the_stem(tiny, fake_hub, tmp_path, monkeypatch):
  """unet_1hot40 (RGB + 40 channels) from its default weights: the stem's RGB filters
  are the file's, the 40 new input channels keep the model's init (the authors':
  PyTorch's default U(+-1/sqrt(fan_in))), and the run records what it loaded."""
  config = sweep.load_config_file(os.path.join(PAPER, "unet_1hot40.py"))
  repo = hub.default_repo(config.model.encoder)
  assert repo == DOCUMENTED["efficientnet_b4"]
  # The same row at test size: the tiny EfficientNet stands in for b4 (also on the Hub).
  monkeypatch.setitem(hub.DEFAULT_WEIGHTS, tiny, hub.PretrainedWeights(repo))
  data, expected = timm_weights(seed=3)
  fake_hub.repos[repo] = (COMMIT, {hub.WEIGHTS_FILE: data})
  config.model.encoder = tiny
  with config.model.unlocked():
    config.model.decoder_channels = (16, 8, 8, 8, 8)
  model = steps_lib.create_model(config, seed=0)
  stem_path = ("encoder", "conv_stem", "kernel")
  fresh = {p: np.asarray(v.get_value()) for p, v in core.model_variables(model).items()}
  assert fresh[stem_path].shape[2] == 3 + 40

  workdir = str(tmp_path / "run")
  report = converters.maybe_init_from(model, config, workdir)
  assert report.widened == stem_path
  got = {p: np.asarray(v.get_value()) for p, v in core.model_variables(model).items()}
  np.testing.assert_array_equal(got[stem_path][:, :, :3], expected[stem_path])
  np.testing.assert_array_equal(got[stem_path][:, :, 3:], fresh[stem_path][:, :, 3:])
  assert config.model.stem_init == "torch_uniform"
  kh, kw, cin, _ = got[stem_path].shape
  assert np.abs(got[stem_path][:, :, 3:]).max() <= 1 / np.sqrt(cin * kh * kw)
  np.testing.assert_array_equal(got[("encoder", "bn1", "var")], expected[("encoder", "bn1", "var")])
  with open(os.path.join(workdir, converters.INIT_FROM_FILE)) as f:
    record = json.load(f)
  assert record["init_from"] == "imagenet" and record["widened"] == "encoder.conv_stem.kernel"
  assert record["hub"] == {"repo_id": repo, "revision": "main", "commit": COMMIT,
                           "filename": "model.safetensors", "arch": tiny,
                           "sha256": hashlib.sha256(data).hexdigest()}


def test_training_stops_on_a_bad_hub_id_before_building_data(fake_hub, tmp_path, monkeypatch):
  """A Hub id the Hub does not have stops `train_and_evaluate` in one line before the data
  set is built (the data_dir stays absent) and before anything is written."""
  from smd_jax.training import trainer  # pylint: disable=g-import-not-at-top
  from tests import toy_config, toy_models  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(registry.ENCODERS, "toy", toy_models.ToyEncoder)
  config = toy_config.get_config()
  config.init_from = "timm/no-such-model"
  config.data.data_dir = str(tmp_path / "tfds")
  workdir = tmp_path / "run"
  with pytest.raises(UserError) as error:
    trainer.train_and_evaluate(config, str(workdir))
  _assert_one_line(error.value, "timm/no-such-model")
  assert not (tmp_path / "tfds").exists()
  assert not workdir.exists() or sorted(os.listdir(workdir)) == []
