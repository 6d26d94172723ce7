"""Fetches only the HyperSim files the builder reads, straight out of the
remote per-scene zips, with HTTP range requests.

  python -m tfds_hypersim.download --split semantic_md --out /data/hypersim
  python -m tfds_hypersim.download --split official --out DIR --scenes ai_001_001 ai_001_002
  python -m tfds_hypersim.download --split semantic_md --out DIR --dry_run   # sizes only

Flags are absl's (`--flag=value` or `--flag value`; `--base-url`, `--dry-run`
spellings work too). Exit status 0; 1 when some members failed (named on
stderr) or for a bad flag; 2 with one line `error: ...` for bad input (an
unknown scene, a bad URL, a file as --out).

HyperSim is released as one zip per scene (`BASE_URL` + `ai_VVV_NNN.zip`, 1-20 GB
each, ~1.9 TB in all). Per frame of the chosen split the builder needs four
members (`processing.FRAME_FILES`):

  ai_VVV_NNN/images/scene_cam_XX_final_hdf5/frame.IIII.color.hdf5
  ai_VVV_NNN/images/scene_cam_XX_geometry_hdf5/frame.IIII.{depth_meters,semantic,render_entity_id}.hdf5

and no per-scene metadata (camera matrices come from the package's
`metadata_camera_parameters.csv`). For each zip this module reads the
end-of-central-directory record (and its ZIP64 variant), then the central
directory, with range requests, and then fetches just the wanted members'
compressed bytes and inflates them (stored or deflate). Files are written in
HyperSim's layout under `--out`, which is the builder's manual_dir.

Resumable: a member's compressed bytes go to `<file>.part` and a dropped
connection or a rerun continues it with a Range request; finished files are
kept when their size and CRC32 match the zip's directory, so a second run
fetches only the zips' directories' headers (0 body bytes: parsed directories
are cached in `--out/.zip_index/`). Members are fetched in parallel on a thread
pool; a progress bar counts bytes. A member whose CRC does not match is
reported by name (and its partial data deleted so that a rerun fetches it
again); the other members are still fetched and the command exits non-zero.

Only the standard library does HTTP (http.client, one kept-alive connection
per thread); tqdm draws the progress bar.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import http.client
import json
import os
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterable, Sequence

import tqdm
from absl import flags

from smd_jax import cli
from smd_jax.errors import UserError
from tfds_hypersim import metadata, processing

# HyperSim's published location of the per-scene zips (the URLs in Apple's
# ml-hypersim code/python/tools/dataset_download_images.py). The one place it is set.
BASE_URL = "https://docs-assets.developer.apple.com/ml-research/datasets/hypersim/v1/scenes/"

INDEX_DIR = ".zip_index"  # cached parsed central directories, under --out
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_RETRIES = 8

# ZIP record signatures and fixed sizes (PKWARE APPNOTE 6.3.x, sections 4.3.*).
_EOCD_SIG = b"PK\x05\x06"
_EOCD64_LOCATOR_SIG = b"PK\x06\x07"
_EOCD64_SIG = b"PK\x06\x06"
_CENTRAL_SIG = b"PK\x01\x02"
_LOCAL_SIG = b"PK\x03\x04"
_EOCD = struct.Struct("<4s4H2LH")           # 22 bytes
_EOCD64_LOCATOR = struct.Struct("<4sLQL")   # 20 bytes
_EOCD64 = struct.Struct("<4sQ2H2L4Q")       # 56 bytes
_CENTRAL = struct.Struct("<4s6H3L5H2L")     # 46 bytes
_LOCAL = struct.Struct("<4s5H3L2H")         # 30 bytes
_ZIP64_EXTRA_ID = 0x0001
_MAX_EOCD_SEARCH = _EOCD.size + 0xFFFF + _EOCD64_LOCATOR.size
_SHORT_TAIL = 8192
_STORED, _DEFLATED = 0, 8


class DownloadError(Exception):
  """A problem the user must act on; the message says what and where."""


@dataclasses.dataclass(frozen=True)
class Member:
  """One file of a zip, from its central directory entry."""
  name: str
  method: int           # 0 stored, 8 deflate
  flags: int
  crc: int
  compressed_size: int
  size: int
  header_offset: int    # of the local file header


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------

class _Http:
  """Range GETs and HEADs over one kept-alive http.client connection per thread."""

  def __init__(self, timeout: float = _TIMEOUT_S):
    self._local = threading.local()
    self._timeout = timeout
    self._lock = threading.Lock()
    self.bytes_received = 0  # body bytes, all requests

  def count(self, n: int) -> None:
    with self._lock:
      self.bytes_received += n

  def _connection(self, url: urllib.parse.SplitResult) -> http.client.HTTPConnection:
    key = (url.scheme, url.hostname, url.port)
    conns = self._local.__dict__.setdefault("conns", {})
    if key not in conns:
      cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
      conns[key] = cls(url.hostname, url.port, timeout=self._timeout)
    return conns[key]

  def drop(self, url: str) -> None:
    """Closes this thread's connection to `url`'s host (after an error)."""
    u = urllib.parse.urlsplit(url)
    conns = self._local.__dict__.get("conns", {})
    conn = conns.pop((u.scheme, u.hostname, u.port), None)
    if conn is not None:
      conn.close()

  def request(self, method: str, url: str, headers: dict | None = None
              ) -> http.client.HTTPResponse:
    """One request; follows up to 5 redirects (a CDN may answer with one)."""
    for _ in range(6):
      u = urllib.parse.urlsplit(url)
      if u.scheme not in ("http", "https") or not u.hostname:
        raise DownloadError(f"bad URL {url!r}: expected http(s)://host/...; check --base-url")
      path = u.path + (f"?{u.query}" if u.query else "")
      conn = self._connection(u)
      try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
      except Exception:
        self.drop(url)
        raise
      location = resp.getheader("Location")
      if resp.status not in (301, 302, 303, 307, 308) or not location:
        return resp
      resp.read()
      url = urllib.parse.urljoin(url, location)
    raise DownloadError(f"too many redirects for {url}; check --base-url")

  def size(self, url: str) -> int:
    """Content-Length from a HEAD request; DownloadError on an HTTP error."""
    for attempt in range(_RETRIES):
      try:
        resp = self.request("HEAD", url)
        resp.read()
        break
      except (OSError, http.client.HTTPException) as e:
        if attempt == _RETRIES - 1:
          raise DownloadError(f"cannot reach {url}: {type(e).__name__}: {e}; check the "
                              "network and --base-url") from e
        time.sleep(min(2.0**attempt * 0.1, 5.0))
    if resp.status != 200:
      raise DownloadError(f"HTTP {resp.status} {resp.reason} for HEAD {url}; check "
                          "--base-url and the scene name")
    length = resp.getheader("Content-Length")
    if length is None:
      raise DownloadError(f"{url}: server sent no Content-Length")
    return int(length)

  def open_range(self, url: str, start: int, end: int) -> http.client.HTTPResponse:
    """Response streaming bytes [start, end] (inclusive) of `url`."""
    resp = self.request("GET", url, {"Range": f"bytes={start}-{end}"})
    if resp.status != 206:
      resp.close()
      self.drop(url)
      raise DownloadError(f"HTTP {resp.status} {resp.reason} for a range of {url} (the "
                          "server must answer Range requests with 206)")
    content_range = resp.getheader("Content-Range", "")
    if not content_range.startswith(f"bytes {start}-"):
      resp.close()
      self.drop(url)
      raise DownloadError(f"{url}: asked for bytes {start}-{end}, got Content-Range "
                          f"{content_range!r}")
    return resp

  def read_range(self, url: str, start: int, end: int) -> bytes:
    """Bytes [start, end] of `url`, retrying dropped connections."""
    data = b""
    for attempt in range(_RETRIES):
      try:
        resp = self.open_range(url, start + len(data), end)
        while True:
          chunk = resp.read(_CHUNK)
          if not chunk:
            break
          data += chunk
          self.count(len(chunk))
        if len(data) == end - start + 1:
          return data
        self.drop(url)  # cut short: the server has hung up
      except (OSError, http.client.HTTPException) as e:
        self.drop(url)
        if attempt == _RETRIES - 1:
          raise DownloadError(f"{url}: reading bytes {start}-{end} failed: "
                              f"{type(e).__name__}: {e}") from e
      time.sleep(min(2.0**attempt * 0.1, 5.0))
    raise DownloadError(f"{url}: bytes {start}-{end} still incomplete after {_RETRIES} tries")


# ---------------------------------------------------------------------------
# Zip directory
# ---------------------------------------------------------------------------

def _zip64_extra(extra: bytes, need: Sequence[str]) -> dict[str, int]:
  """Values of the ZIP64 extended-information extra field (id 0x0001).

  It holds, in this order, only the fields whose 32-bit slot is 0xFFFFFFFF (or
  0xFFFF for the disk): size, compressed size, header offset, disk (APPNOTE 4.5.3).
  """
  pos = 0
  while pos + 4 <= len(extra):
    tag, length = struct.unpack_from("<2H", extra, pos)
    body = extra[pos + 4:pos + 4 + length]
    if tag == _ZIP64_EXTRA_ID:
      out, off = {}, 0
      for field in need:
        fmt = "<L" if field == "disk" else "<Q"
        if off + struct.calcsize(fmt) > len(body):
          raise DownloadError(f"ZIP64 extra field too short for {field}")
        out[field] = struct.unpack_from(fmt, body, off)[0]
        off += struct.calcsize(fmt)
      return out
    pos += 4 + length
  raise DownloadError("entry needs ZIP64 sizes but has no ZIP64 extra field")


def parse_central_directory(data: bytes, count: int) -> list[Member]:
  """Members of a central directory (`count` entries from the start of `data`)."""
  members, pos = [], 0
  for _ in range(count):
    if data[pos:pos + 4] != _CENTRAL_SIG:
      raise DownloadError(f"bad central directory entry at +{pos}")
    (_, _, _, flags, method, _, _, crc, csize, size, name_len, extra_len,
     comment_len, disk, _, _, offset) = _CENTRAL.unpack_from(data, pos)
    pos += _CENTRAL.size
    raw_name = data[pos:pos + name_len]
    extra = data[pos + name_len:pos + name_len + extra_len]
    pos += name_len + extra_len + comment_len
    need = [f for f, v in (("size", size), ("compressed_size", csize),
                           ("header_offset", offset)) if v == 0xFFFFFFFF]
    if disk == 0xFFFF:
      need.append("disk")
    big = _zip64_extra(extra, need) if need else {}
    name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
    members.append(Member(name=name, method=method, flags=flags, crc=crc,
                          compressed_size=big.get("compressed_size", csize),
                          size=big.get("size", size),
                          header_offset=big.get("header_offset", offset)))
  return members


def read_directory(client: _Http, url: str, zip_size: int) -> list[Member]:
  """Members of the remote zip at `url` (size `zip_size`), via range requests."""
  at = -1
  # The end record is the last 22 bytes unless the zip has a comment (<= 64 KiB):
  # look in a short tail first, then in the longest possible one.
  for search in (_SHORT_TAIL, _MAX_EOCD_SEARCH):
    tail_start = max(0, zip_size - search)
    tail = client.read_range(url, tail_start, zip_size - 1)
    at = tail.rfind(_EOCD_SIG)
    while at >= 0 and at + _EOCD.size > len(tail):
      at = tail.rfind(_EOCD_SIG, 0, at)
    if at >= 0 or tail_start == 0:
      break
  if at < 0:
    raise DownloadError(f"{url}: no zip end-of-central-directory record (not a zip file?)")
  _, _, _, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
  if count == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
    loc = at - _EOCD64_LOCATOR.size
    if loc < 0 or tail[loc:loc + 4] != _EOCD64_LOCATOR_SIG:
      raise DownloadError(f"{url}: ZIP64 end-of-central-directory locator missing")
    _, _, eocd64_offset, _ = _EOCD64_LOCATOR.unpack_from(tail, loc)
    rec = (tail[eocd64_offset - tail_start:][:_EOCD64.size] if eocd64_offset >= tail_start
           else client.read_range(url, eocd64_offset, eocd64_offset + _EOCD64.size - 1))
    if rec[:4] != _EOCD64_SIG:
      raise DownloadError(f"{url}: bad ZIP64 end-of-central-directory record")
    _, _, _, _, _, _, _, count, cd_size, cd_offset = _EOCD64.unpack(rec)
  if cd_offset >= tail_start:
    data = tail[cd_offset - tail_start:cd_offset - tail_start + cd_size]
  else:
    data = client.read_range(url, cd_offset, cd_offset + cd_size - 1)
  return parse_central_directory(data, count)


# ---------------------------------------------------------------------------
# What to fetch
# ---------------------------------------------------------------------------

def wanted_frames(split_scheme: str, scenes: Iterable[str] | None = None
                  ) -> dict[str, list[tuple[str, int]]]:
  """scene -> [(camera, frame)] over all splits of a scheme, optionally only `scenes`.

  Trajectories in `metadata.KNOWN_BROKEN` are left out (the builder skips them).
  """
  if split_scheme not in metadata.SPLIT_SCHEMES:
    raise DownloadError(f"unknown split scheme {split_scheme!r}; use one of {metadata.SPLIT_SCHEMES}")
  by_scene: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
  for split in metadata.SPLIT_FILES:
    for scene, camera, frame in metadata.split_frames(split, split_scheme):
      frames = by_scene[scene]
      if not metadata.is_known_broken(scene, camera):
        frames.append((camera, frame))
  if scenes is not None:
    scenes = list(scenes)
    unknown = [s for s in scenes if s not in by_scene]
    if unknown:
      raise DownloadError(
          f"scene(s) {', '.join(unknown)} not in the {split_scheme} split lists; scene names "
          f"look like ai_001_001 (see tfds_hypersim/splits/ or "
          "metadata_images_split_scene_v1.csv)")
    by_scene = {s: by_scene[s] for s in scenes}
  return {s: sorted(set(v)) for s, v in sorted(by_scene.items()) if v}


def member_paths(scene: str, frames: Iterable[tuple[str, int]]) -> list[str]:
  """Zip member names (scene-relative, HyperSim layout) of the frames' four files."""
  out = []
  for camera, frame in frames:
    for kind in processing.FRAME_FILES:
      path = processing.frame_path(".", ".", camera, frame, kind)  # ./././images/...
      out.append(os.path.normpath(path).replace(os.sep, "/"))
  return out


def _scene_relative(scene: str, name: str) -> str:
  prefix = scene + "/"
  return name[len(prefix):] if name.startswith(prefix) else name


# ---------------------------------------------------------------------------
# Fetching one member
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class _Job:
  scene: str
  url: str
  member: Member
  path: str  # output file

  @property
  def label(self) -> str:
    return f"{self.scene}.zip:{self.member.name}"


def _file_crc(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def is_complete(path: str, member: Member) -> bool:
  """True if `path` holds the member's content (size and CRC32 match)."""
  try:
    if os.path.getsize(path) != member.size:
      return False
  except OSError:
    return False
  return _file_crc(path) == member.crc


def _fetch_compressed(client: _Http, job: _Job, part: str, progress) -> None:
  """Appends the member's compressed bytes to `part` until it holds all of them."""
  m = job.member
  have = os.path.getsize(part) if os.path.exists(part) else 0
  if have > m.compressed_size:
    os.remove(part)
    have = 0
  data_start = None
  failures = 0
  while have < m.compressed_size:
    before = have
    try:
      if data_start is None:
        # Local header: its extra field may differ in length from the central one.
        head = client.read_range(job.url, m.header_offset, m.header_offset + _LOCAL.size - 1)
        if head[:4] != _LOCAL_SIG:
          raise DownloadError(f"{job.label}: bad local file header at {m.header_offset}")
        name_len, extra_len = _LOCAL.unpack(head)[-2:]
        data_start = m.header_offset + _LOCAL.size + name_len + extra_len
      resp = client.open_range(job.url, data_start + have, data_start + m.compressed_size - 1)
      with open(part, "ab") as f:
        while have < m.compressed_size:
          chunk = resp.read(min(_CHUNK, m.compressed_size - have))
          if not chunk:
            break
          f.write(chunk)
          have += len(chunk)
          client.count(len(chunk))
          progress(len(chunk))
      resp.close()
      if have < m.compressed_size:  # cut short: the server has hung up
        client.drop(job.url)
      error = None
    except (OSError, http.client.HTTPException) as e:
      client.drop(job.url)
      error = e
    if error is not None or have == before:
      failures += 1
      if failures >= _RETRIES:
        why = f"{type(error).__name__}: {error}" if error else "no data received"
        raise DownloadError(f"{job.label}: download keeps failing ({why}); rerun to "
                            "resume") from error
      time.sleep(min(2.0**failures * 0.1, 5.0))


def _inflate(job: _Job, part: str, out: str) -> None:
  """Writes the member's content from its compressed bytes; checks size and CRC32."""
  m = job.member
  if m.method not in (_STORED, _DEFLATED):
    raise DownloadError(f"{job.label}: unsupported zip compression method {m.method}")
  if m.flags & 0x1:
    raise DownloadError(f"{job.label}: encrypted zip members are not supported")
  crc, size = 0, 0
  inflater = zlib.decompressobj(-15) if m.method == _DEFLATED else None
  try:
    with open(part, "rb") as src, open(out, "wb") as dst:
      while chunk := src.read(_CHUNK):
        if inflater is not None:
          chunk = inflater.decompress(chunk)
        dst.write(chunk)
        crc, size = zlib.crc32(chunk, crc), size + len(chunk)
      if inflater is not None:
        tail = inflater.flush()
        dst.write(tail)
        crc, size = zlib.crc32(tail, crc), size + len(tail)
  except zlib.error as e:
    bad = f"corrupt deflate data ({e})"
  else:
    bad = None
    if size != m.size:
      bad = f"size {size} != {m.size} in the zip directory"
    elif crc != m.crc:
      bad = f"CRC32 {crc:08x} != {m.crc:08x} in the zip directory"
  if bad:
    for p in (part, out):
      if os.path.exists(p):
        os.remove(p)
    raise DownloadError(f"{job.label}: corrupt member: {bad}; its partial data was deleted, "
                        "rerun to fetch it again (if it persists, the remote zip is damaged)")


def fetch_member(client: _Http, job: _Job, progress=lambda n: None) -> str:
  """Fetches one member into job.path unless complete; returns 'kept' or 'fetched'."""
  if is_complete(job.path, job.member):
    return "kept"
  os.makedirs(os.path.dirname(job.path), exist_ok=True)
  part, tmp = job.path + ".part", job.path + ".tmp"
  _fetch_compressed(client, job, part, progress)
  _inflate(job, part, tmp)
  os.replace(tmp, job.path)
  os.remove(part)
  return "fetched"


# ---------------------------------------------------------------------------
# Whole download
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Summary:
  scenes: int = 0
  zip_bytes: int = 0           # full size of the scenes' zips
  wanted_bytes: int = 0        # compressed size of the wanted members
  wanted_members: int = 0
  fetched_members: int = 0
  kept_members: int = 0
  not_in_zip: list = dataclasses.field(default_factory=list)  # member labels
  errors: list = dataclasses.field(default_factory=list)      # messages
  bytes_fetched: int = 0       # HTTP body bytes, directories included

  def text(self) -> str:
    mb = lambda n: f"{n / 1e6:,.1f} MB"  # noqa: E731
    share = self.bytes_fetched / self.zip_bytes if self.zip_bytes else 0.0
    lines = [
        f"{self.scenes} scene zips, {mb(self.zip_bytes)} in full; wanted "
        f"{self.wanted_members} members, {mb(self.wanted_bytes)} compressed",
        f"fetched {mb(self.bytes_fetched)} over HTTP ({100 * share:.2f}% of the full zips); "
        f"{self.fetched_members} members written, {self.kept_members} already complete",
    ]
    if self.not_in_zip:
      lines.append(f"{len(self.not_in_zip)} listed members are not in their zip (the builder "
                   f"skips those frames), e.g. {self.not_in_zip[0]}")
    if self.errors:
      lines.append(f"{len(self.errors)} members failed:")
      lines += [f"  {e}" for e in self.errors]
    return "\n".join(lines)


def _zip_url(base_url: str, scene: str) -> str:
  return base_url.rstrip("/") + "/" + scene + ".zip"


def _directory(client: _Http, out: str, scene: str, url: str) -> tuple[int, list[Member]]:
  """(zip size, members), from the cache in out/.zip_index when the size matches."""
  size = client.size(url)
  cache = os.path.join(out, INDEX_DIR, scene + ".json")
  try:
    with open(cache) as f:
      cached = json.load(f)
    if cached["zip_size"] == size and cached["url"] == url:
      return size, [Member(**m) for m in cached["members"]]
  except (OSError, ValueError, KeyError, TypeError):
    pass
  members = read_directory(client, url, size)
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  with open(cache + ".tmp", "w") as f:
    json.dump({"url": url, "zip_size": size,
               "members": [dataclasses.asdict(m) for m in members]}, f)
  os.replace(cache + ".tmp", cache)
  return size, members


def download(out: str | os.PathLike, split_scheme: str = "semantic_md", *,
             scenes: Iterable[str] | None = None, base_url: str = BASE_URL,
             workers: int = 8, dry_run: bool = False, progress: bool = True,
             timeout: float = _TIMEOUT_S) -> Summary:
  """Fetches the builder's files of a split scheme's frames into `out`.

  Args:
    out: output folder (the builder's manual_dir); created if needed.
    split_scheme: "semantic_md" (the paper's lists) or "official" (HyperSim's
      v1 split, public frames).
    scenes: only these scenes (names like "ai_001_001"); default all of the scheme.
    base_url: folder URL holding the `ai_VVV_NNN.zip` files.
    workers: parallel HTTP connections.
    dry_run: read the zips' directories only and report sizes.
    progress: draw a tqdm progress bar.
    timeout: seconds before a stalled connection is dropped (and resumed).

  Returns:
    A Summary; `errors` lists members that failed (the others are fetched).

  Raises:
    DownloadError: bad arguments, an unreachable server or a missing zip.
  """
  out = os.path.abspath(os.fspath(out))
  if os.path.exists(out) and not os.path.isdir(out):
    raise DownloadError(f"--out {out} is a file; give a folder (it is created if missing)")
  frames = wanted_frames(split_scheme, scenes)
  client = _Http(timeout)
  summary = Summary(scenes=len(frames))
  os.makedirs(out, exist_ok=True)

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    urls = {s: _zip_url(base_url, s) for s in frames}
    dirs = dict(zip(frames, pool.map(lambda s: _directory(client, out, s, urls[s]), frames)))
    jobs = []
    for scene, (zip_size, members) in dirs.items():
      summary.zip_bytes += zip_size
      by_name = {_scene_relative(scene, m.name): m for m in members}
      for name in member_paths(scene, frames[scene]):
        member = by_name.get(name)
        if member is None:
          summary.not_in_zip.append(f"{scene}.zip:{scene}/{name}")
          continue
        jobs.append(_Job(scene, urls[scene], member, os.path.join(out, scene, *name.split("/"))))
    summary.wanted_members = len(jobs)
    summary.wanted_bytes = sum(j.member.compressed_size for j in jobs)
    if not dry_run:
      bar = tqdm.tqdm(total=summary.wanted_bytes, unit="B", unit_scale=True,
                      desc="hypersim", disable=not progress)
      lock = threading.Lock()

      def advance(n):
        with lock:
          bar.update(n)

      def run(job):
        try:
          status = fetch_member(client, job, advance)
        except DownloadError as e:
          return "error", str(e)
        if status == "kept":
          advance(job.member.compressed_size)
        return status, None

      for status, message in pool.map(run, jobs):
        if status == "error":
          summary.errors.append(message)
        elif status == "kept":
          summary.kept_members += 1
        else:
          summary.fetched_members += 1
      bar.close()
  summary.bytes_fetched = client.bytes_received
  return summary


def define_flags(flag_values: flags.FlagValues) -> None:
  """Registers the command's flags (absl; hyphenated spellings such as `--base-url` also work)."""
  flags.DEFINE_enum("split", "semantic_md", list(metadata.SPLIT_SCHEMES),
                    "Which frames: the paper's lists or HyperSim's official v1 split.",
                    flag_values=flag_values)
  flags.DEFINE_string("out", None, "Output folder = the builder's manual_dir.",
                      flag_values=flag_values)
  flags.DEFINE_multi_string("scenes", None, "Only these scenes ai_VVV_NNN (default: every scene "
                            "of the split): --scenes A B or --scenes=A --scenes=B.",
                            flag_values=flag_values)
  flags.DEFINE_string("base_url", BASE_URL, "Folder URL of the scene zips.",
                      flag_values=flag_values)
  flags.DEFINE_integer("workers", 8, "Parallel connections.", flag_values=flag_values)
  flags.DEFINE_bool("dry_run", False, "Read the zip directories only and print the sizes.",
                    flag_values=flag_values)
  flags.DEFINE_bool("no_progress", False, "No progress bar.", flag_values=flag_values)
  flags.mark_flag_as_required("out", flag_values=flag_values)
  cli.define_hyphen_aliases(flag_values)


def run(flag_values: flags.FlagValues, args: Sequence[str]) -> int:
  """Downloads what the flags ask for; exit status 0, 1 (some members failed), 2 (bad input)."""
  if args:
    raise UserError(f"Unexpected arguments {' '.join(args)} (scenes go after --scenes).")
  try:
    summary = download(flag_values.out, flag_values.split, scenes=flag_values.scenes,
                       base_url=flag_values.base_url, workers=flag_values.workers,
                       dry_run=flag_values.dry_run, progress=not flag_values.no_progress)
  except DownloadError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(summary.text())
  return 1 if summary.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
  """The command on `argv` (without the program name; None: sys.argv); returns the exit status."""
  usage = "\n\n".join(__doc__.split("\n\n")[:2])
  return cli.run_argv(run, define_flags, argv, usage=usage,
                      multi_value=("scenes",), prog="python -m tfds_hypersim.download")


if __name__ == "__main__":
  sys.exit(main())
