"""tfds_hypersim.download against a local HTTP server (127.0.0.1, Range + HEAD).

The served zips hold the procedural generator's HyperSim-format scenes
(tfds_hypersim/dummy_data, written by `synthetic.generate`) in HyperSim's zip
layout `ai_VVV_NNN/images/...`, plus members the builder does not need. Files
written by the downloader are compared byte for byte with the originals.
"""

import http.server
import os
import random
import re
import struct
import threading
import zipfile
import zlib

import pytest
import tensorflow_datasets as tfds

import tfds_hypersim
from tfds_hypersim import download
from tfds_hypersim import make_dummy_data
from tfds_hypersim import metadata

DUMMY = make_dummy_data.default_dir()
SCENES = sorted(d for d in os.listdir(DUMMY) if d.startswith("ai_"))
# Two scenes stored, two deflated.
METHOD = {s: (zipfile.ZIP_STORED if i % 2 else zipfile.ZIP_DEFLATED)
          for i, s in enumerate(SCENES)}
pytestmark = pytest.mark.timeout(120)


def _dummy_files(scene):
  out = {}
  for dirpath, _, names in os.walk(os.path.join(DUMMY, scene)):
    for n in names:
      path = os.path.join(dirpath, n)
      out[os.path.relpath(path, DUMMY).replace(os.sep, "/")] = path
  return out


def _make_zip(path, scene, method):
  rng = random.Random(scene)
  with zipfile.ZipFile(path, "w", compression=method) as z:
    z.writestr(f"{scene}/_detail/metadata_scene.csv", "parameter_name,parameter_value\n")
    for name, src in sorted(_dummy_files(scene).items()):
      z.write(src, name)
    # Members the builder does not need (HyperSim has ~30 per frame).
    z.writestr(f"{scene}/images/scene_cam_00_final_preview/frame.0000.tonemap.jpg",
               rng.randbytes(150_000))
    z.writestr(f"{scene}/images/scene_cam_00_geometry_hdf5/frame.0000.position.hdf5",
               rng.randbytes(150_000))


class _Server:
  """ThreadingHTTPServer serving files of a folder at /scenes/NAME, with
  single-range GETs, HEAD, a log of requests and optional dropped responses."""

  def __init__(self, folder):
    self.folder = folder
    self.log = []            # (method, path, start, end)
    self.body_bytes = 0      # bytes of GET bodies sent
    self.drops_left = 0      # next N GETs of > drop_min bytes are cut in half
    self.drop_min = 20_000
    self.drop_fraction = 0.5  # of a dropped response's body that is sent
    self.short_left = 0      # next N GETs honestly serve only the first half of the range
    self.lock = threading.Lock()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):  # quiet
        pass

      def _file(self):
        prefix, _, name = self.path.rpartition("/")
        if prefix == "/moved":  # a CDN-style redirect to the real location
          self.send_response(302)
          self.send_header("Location", f"/scenes/{name}")
          self.send_header("Content-Length", "0")
          self.end_headers()
          return None
        path = os.path.join(server.folder, name)
        if prefix != "/scenes" or not os.path.isfile(path):
          self.send_response(404)
          self.send_header("Content-Length", "0")
          self.end_headers()
          return None
        return path

      def do_HEAD(self):
        path = self._file()
        if path is None:
          return
        with server.lock:
          server.log.append(("HEAD", self.path, None, None))
        self.send_response(200)
        self.send_header("Content-Length", str(os.path.getsize(path)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

      def do_GET(self):
        path = self._file()
        if path is None:
          return
        size = os.path.getsize(path)
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        assert m, "the downloader always sends a Range"
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
        with open(path, "rb") as f:
          f.seek(start)
          body = f.read(end - start + 1)
        with server.lock:
          server.log.append(("GET", self.path, start, end))
          drop = server.drops_left > 0 and len(body) > server.drop_min
          if drop:
            server.drops_left -= 1
          if server.short_left > 0 and len(body) > 1:  # a valid, shorter 206
            server.short_left -= 1
            body = body[:len(body) // 2]
            end = start + len(body) - 1
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if drop:  # promise everything, send half, hang up
          body = body[:int(len(body) * server.drop_fraction)]
          self.close_connection = True
        self.wfile.write(body)
        self.wfile.flush()
        with server.lock:
          server.body_bytes += len(body)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/scenes/"
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def reset(self):
    with self.lock:
      self.log.clear()
      self.body_bytes = 0

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture(scope="module")
def zips(tmp_path_factory):
  folder = tmp_path_factory.mktemp("zips")
  for scene in SCENES:
    _make_zip(folder / f"{scene}.zip", scene, METHOD[scene])
  return folder


@pytest.fixture
def server(zips):
  s = _Server(str(zips))
  yield s
  s.close()


def _fetch(server, out, **kw):
  kw.setdefault("scenes", SCENES)
  return download.download(out, "semantic_md", base_url=server.url, workers=4,
                           progress=False, timeout=10, **kw)


def _assert_same_files(out, scenes=SCENES):
  """Every downloaded file equals the generator's; nothing else was written."""
  written = {}
  for dirpath, dirnames, names in os.walk(out):
    dirnames[:] = [d for d in dirnames if d != download.INDEX_DIR]
    for n in names:
      path = os.path.join(dirpath, n)
      written[os.path.relpath(path, out).replace(os.sep, "/")] = path
  expected = {}
  for scene in scenes:
    expected.update(_dummy_files(scene))
  assert sorted(written) == sorted(expected)
  for name, path in written.items():
    with open(path, "rb") as a, open(expected[name], "rb") as b:
      assert a.read() == b.read(), name


def _listed_members(scenes):
  frames = set()
  for split in metadata.SPLIT_FILES:
    frames |= {f for f in metadata.split_frames(split) if f[0] in scenes}
  return 4 * len(frames)


def test_download_fetches_only_wanted_members_and_resumes_to_zero(server, zips, tmp_path):
  out = tmp_path / "raw"
  summary = _fetch(server, out)
  _assert_same_files(out)
  n_files = sum(len(_dummy_files(s)) for s in SCENES)
  assert summary.errors == []
  assert summary.scenes == 4
  assert summary.wanted_members == n_files == summary.fetched_members
  assert summary.kept_members == 0
  # Every other listed frame file of these scenes is reported as not in its zip.
  assert len(summary.not_in_zip) == _listed_members(set(SCENES)) - n_files
  assert summary.zip_bytes == sum(os.path.getsize(zips / f"{s}.zip") for s in SCENES)
  # Client and server agree on the bytes moved; well under the zips (no previews).
  assert summary.bytes_fetched == server.body_bytes
  compressed = 0
  for s in SCENES:
    with zipfile.ZipFile(zips / f"{s}.zip") as z:
      compressed += sum(i.compress_size for i in z.infolist() if i.filename.endswith(
          (".color.hdf5", ".depth_meters.hdf5", ".semantic.hdf5", ".render_entity_id.hdf5"))
          and "position" not in i.filename)
  assert summary.wanted_bytes == compressed
  # Overhead: an 8 KiB tail per zip (end records and, here, the whole directory)
  # and a 30-byte local header per member.
  assert compressed < summary.bytes_fetched <= compressed + 4 * 8192 + 30 * n_files
  assert summary.bytes_fetched < summary.zip_bytes - 4 * 250_000  # previews etc. skipped
  assert "fetched" in summary.text() and "% of the full zips" in summary.text()

  # Second run: sizes by HEAD, directories from the cache, files kept after CRC check.
  server.reset()
  again = _fetch(server, out)
  assert server.body_bytes == 0 and again.bytes_fetched == 0
  assert {m for m, *_ in server.log} == {"HEAD"}
  assert again.kept_members == n_files and again.fetched_members == 0
  _assert_same_files(out)

  # The builder reads the result: same frames as from the generator's folder.
  builder = tfds_hypersim.Builder(config=tfds_hypersim.hypersim_config(8),
                                  data_dir=tmp_path / "tfds", num_workers=1)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=out))
  assert {k: len(v) for k, v in builder.as_data_source().items()} == {
      "train": 2, "validation": 1, "test": 1}


def test_dropped_connections_are_resumed(server, tmp_path):
  server.drops_left = 6
  out = tmp_path / "raw"
  summary = _fetch(server, out)
  assert server.drops_left == 0  # all six drops happened
  assert summary.errors == []
  _assert_same_files(out)
  # Resumed: some GET started inside a member's data, after the dropped half.
  starts = {}
  for method, path, start, end in server.log:
    if method == "GET":
      starts.setdefault((path, end), []).append(start)
  assert sum(len(v) > 1 for v in starts.values()) >= 1


def test_shorter_range_responses_are_completed(server, tmp_path):
  # A server may answer a range with fewer bytes (and a matching Content-Range): the
  # reader asks again for the rest, for directory reads and member data alike.
  server.short_left = 8
  _fetch(server, str(tmp_path / "out"))
  assert server.short_left == 0
  _assert_same_files(str(tmp_path / "out"))


def test_partial_file_resumes_with_range(server, zips, tmp_path):
  scene = SCENES[1]
  assert METHOD[scene] == zipfile.ZIP_STORED
  out = tmp_path / "raw"
  name = sorted(n for n in _dummy_files(scene) if n.endswith("color.hdf5"))[0]
  with zipfile.ZipFile(zips / f"{scene}.zip") as z:
    info = z.getinfo(name)
  with open(_dummy_files(scene)[name], "rb") as f:
    content = f.read()
  half = len(content) // 2
  part = out / (name + ".part")
  part.parent.mkdir(parents=True)
  part.write_bytes(content[:half])
  _fetch(server, out, scenes=[scene])
  _assert_same_files(out, [scene])
  assert not part.exists()
  # Its data was asked for from the middle on; the first half never again.
  data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
  gets = [(s, e) for m, _, s, e in server.log if m == "GET"]
  assert (data_start + half, data_start + info.compress_size - 1) in gets
  assert not any(s <= data_start < e for s, e in gets)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_corrupt_member_is_named(tmp_path, method):
  scene = SCENES[0]
  folder = tmp_path / "zips"
  folder.mkdir()
  path = folder / f"{scene}.zip"
  _make_zip(path, scene, method)
  victim = sorted(n for n in _dummy_files(scene) if n.endswith("depth_meters.hdf5"))[0]
  with zipfile.ZipFile(path) as z:
    info = z.getinfo(victim)
  data = bytearray(path.read_bytes())
  start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
  for k in range(start + 100, start + 110):  # damage the member's data, keep its CRC
    data[k] ^= 0xFF
  path.write_bytes(bytes(data))
  server = _Server(str(folder))
  try:
    out = tmp_path / "raw"
    summary = _fetch(server, out, scenes=[scene])
    assert len(summary.errors) == 1
    assert f"{scene}.zip:{victim}" in summary.errors[0]
    assert "corrupt member" in summary.errors[0]
    # The others are written and correct; the bad one is absent, not half-written.
    bad = out / victim
    assert not bad.exists() and not os.path.exists(str(bad) + ".part")
    for name, src in _dummy_files(scene).items():
      if name != victim:
        with open(src, "rb") as f:
          assert (out / name).read_bytes() == f.read()
    # The CLI exits non-zero and prints the member's name.
    rc = download.main(["--out", str(out), "--scenes", scene, "--base-url", server.url,
                        "--no_progress"])
    assert rc == 1
  finally:
    server.close()


def test_scenes_selection_and_cli(server, tmp_path, capsys):
  out = tmp_path / "raw"
  rc = download.main(["--split", "semantic_md", "--out", str(out), "--scenes", SCENES[2],
                      "--base-url", server.url, "--workers", "2", "--no_progress"])
  assert rc == 0
  assert sorted(p for p in os.listdir(out) if not p.startswith(".")) == [SCENES[2]]
  _assert_same_files(out, [SCENES[2]])
  text = capsys.readouterr().out
  assert "1 scene zips" in text and "% of the full zips" in text
  # Only that zip was touched.
  assert {p for _, p, *_ in server.log} == {f"/scenes/{SCENES[2]}.zip"}


def test_redirects_are_followed(server, tmp_path):
  out = tmp_path / "raw"
  summary = download.download(out, scenes=[SCENES[3]], progress=False, timeout=10,
                              base_url=server.url.replace("/scenes/", "/moved/"))
  assert summary.errors == [] and summary.fetched_members == len(_dummy_files(SCENES[3]))
  _assert_same_files(out, [SCENES[3]])


def test_dry_run_reads_directories_only(server, tmp_path):
  summary = _fetch(server, tmp_path / "raw", dry_run=True)
  assert summary.fetched_members == 0 and summary.wanted_members > 0
  assert summary.wanted_bytes > summary.bytes_fetched > 0
  assert sorted(os.listdir(tmp_path / "raw")) == [download.INDEX_DIR]


def test_bad_input_gives_one_line_errors(server, tmp_path, capsys):
  with pytest.raises(download.DownloadError, match=r"ai_999_999 not in the semantic_md"):
    _fetch(server, tmp_path, scenes=["ai_999_999"])
  with pytest.raises(download.DownloadError, match=r"HTTP 404.*--base-url"):
    download.download(tmp_path, "semantic_md", scenes=[SCENES[0]],
                      base_url=server.url + "nothing/", progress=False, timeout=5)
  (tmp_path / "file").write_text("")
  with pytest.raises(download.DownloadError, match=r"is a file"):
    download.download(tmp_path / "file", scenes=[SCENES[0]], base_url=server.url)
  with pytest.raises(download.DownloadError, match=r"bad URL.*--base-url"):
    download.download(tmp_path, scenes=[SCENES[0]], base_url="ftp://x/", progress=False)
  assert download.main(["--out", str(tmp_path), "--scenes", "ai_1"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1
  with pytest.raises(SystemExit):
    download.main(["--out", str(tmp_path), "--split", "nyu"])
  assert download.BASE_URL == ("https://docs-assets.developer.apple.com/ml-research/"
                               "datasets/hypersim/v1/scenes/")


@pytest.mark.parametrize("spelling", [
    ["--base-url", "http://h/", "--dry-run", "--no-progress", "--scenes", "ai_1", "ai_2"],
    ["--base_url=http://h/", "--dry_run", "--no_progress", "--scenes=ai_1", "--scenes=ai_2"],
    ["--scenes", "ai_1", "--base_url", "http://h/", "--scenes", "ai_2", "--dry-run",
     "--no_progress"]])
def test_cli_takes_both_flag_spellings(spelling):
  """The argparse spellings (--base-url, --dry-run, --scenes A B) and absl's (--base_url,
  --dry_run, repeated --scenes=A) parse to the same flags (parse only, nothing fetched)."""
  from smd_jax import cli  # pylint: disable=g-import-not-at-top
  flag_values, args = cli.parse_argv(download.define_flags, ["--out", "o"] + spelling,
                                     usage=download.__doc__, multi_value=("scenes",))
  assert args == []
  assert (flag_values.base_url, flag_values.dry_run, flag_values.no_progress) == (
      "http://h/", True, True)
  assert flag_values.scenes == ["ai_1", "ai_2"] and flag_values.workers == 8


def _zip64_archive(members):
  """A zip written by hand with every size and offset in ZIP64 form (32-bit
  slots 0xFFFFFFFF, values in the 0x0001 extra field) and a ZIP64 end record."""
  out, central = bytearray(), bytearray()
  for name, content, method in members:
    data = zlib.compress(content)[2:-4] if method == 8 else content  # raw deflate
    crc, raw = zlib.crc32(content), name.encode()
    offset = len(out)
    local_extra = struct.pack("<HHQQ", 1, 16, len(content), len(data))
    out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 45, 0, method, 0, 0, crc,
                       0xFFFFFFFF, 0xFFFFFFFF, len(raw), len(local_extra))
    out += raw + local_extra + data
    extra = struct.pack("<HHQQQ", 1, 24, len(content), len(data), offset)
    central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 45, 45, 0, method, 0, 0, crc,
                           0xFFFFFFFF, 0xFFFFFFFF, len(raw), len(extra), 0, 0, 0, 0,
                           0xFFFFFFFF)
    central += raw + extra
  cd_offset = len(out)
  out += central
  eocd64 = len(out)
  out += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, len(members),
                     len(members), len(central), cd_offset)
  out += struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd64, 1)
  out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                     0xFFFFFFFF, 0)
  return bytes(out)


def test_zip64_archive(tmp_path):
  rng = random.Random(0)
  payload = {"a/stored.bin": rng.randbytes(70_000),
             "a/deflated.bin": b"hypersim " * 9_000}
  blob = _zip64_archive([("a/stored.bin", payload["a/stored.bin"], 0),
                         ("a/deflated.bin", payload["a/deflated.bin"], 8)])
  (tmp_path / "ai_000_064.zip").write_bytes(blob)
  # Independent reader: Python's zipfile understands the hand-made archive.
  with zipfile.ZipFile(tmp_path / "ai_000_064.zip") as z:
    assert {n: z.read(n) for n in z.namelist()} == payload
  server = _Server(str(tmp_path))
  try:
    http = download._Http(timeout=5)  # pylint: disable=protected-access
    url = server.url + "ai_000_064.zip"
    members = download.read_directory(http, url, len(blob))
    assert [m.name for m in members] == ["a/stored.bin", "a/deflated.bin"]
    assert [m.size for m in members] == [70_000, 81_000]
    assert [m.method for m in members] == [0, 8]
    for m in members:
      job = download._Job("ai_000_064", url, m, str(tmp_path / "out" / m.name))  # pylint: disable=protected-access
      assert download.fetch_member(http, job) == "fetched"
      with open(job.path, "rb") as f:
        assert f.read() == payload[m.name]
      assert download.fetch_member(http, job) == "kept"
  finally:
    server.close()


def test_server_that_always_drops_fails_by_name(server, tmp_path, monkeypatch):
  monkeypatch.setattr(download, "_RETRIES", 3)
  server.drops_left, server.drop_fraction = 10**6, 0.0  # headers, then hang up
  scene = SCENES[2]
  summary = _fetch(server, tmp_path / "raw", scenes=[scene])
  files = _dummy_files(scene)
  big = sorted(n for n, p in files.items() if os.path.getsize(p) > 40_000)
  assert big and len(big) < len(files)  # members large enough to be cut, and others
  assert len(summary.errors) == len(big)
  assert summary.fetched_members == len(files) - len(big)
  for name, error in zip(big, sorted(summary.errors)):
    assert error.startswith(f"{scene}.zip:{name}: download keeps failing")
    assert "rerun to resume" in error
    assert not (tmp_path / "raw" / name).exists()
  server.drops_left = 0
  again = _fetch(server, tmp_path / "raw", scenes=[scene])
  assert again.errors == []
  _assert_same_files(tmp_path / "raw", [scene])


def test_known_broken_trajectories_are_not_fetched():
  lines = []
  for name in ("train", "val", "test"):
    path = os.path.join(os.path.dirname(download.__file__), "splits",
                        f"semantic_md_split_{name}.txt")
    with open(path) as f:
      lines += [l.split() for l in f if l.strip()]
  in_lists = {(s, c) for s, c, _ in lines if s == "ai_004_009"}
  assert in_lists == {("ai_004_009", "cam_00"), ("ai_004_009", "cam_01")}
  wanted = download.wanted_frames("semantic_md", ["ai_004_009", "ai_038_007"])
  assert list(wanted) == ["ai_004_009"]  # ai_038_007's only listed trajectory is broken
  assert wanted["ai_004_009"] == sorted(
      (c, int(i)) for s, c, i in lines if s == "ai_004_009" and c == "cam_00")
  assert sum(map(len, download.wanted_frames("semantic_md").values())) == len(lines) - 99


def test_present_file_of_the_right_size_but_wrong_crc_is_fetched_again(server, zips, tmp_path):
  """A file already on disk is kept only if its CRC32 matches the zip's directory: one
  corrupted byte (same size) makes the member be fetched again, and only that one."""
  del zips
  out = tmp_path / "raw"
  first = _fetch(server, out)
  assert first.errors == [] and first.kept_members == 0
  victim = sorted(_dummy_files(SCENES[0]))[0]
  path = out / victim
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))  # same size, other content
  server.reset()
  again = _fetch(server, out)
  assert again.errors == []
  assert again.fetched_members == 1 and again.kept_members == first.fetched_members - 1
  _assert_same_files(out)  # the corrupted file was replaced by the zip's content
