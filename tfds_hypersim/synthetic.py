"""Procedural indoor scenes written in HyperSim's raw file layout.

Used by the embedded demo config and the tests, so that the real builder runs on
data with HyperSim's files, shapes, dtypes and value ranges without a download.

Usage:
  python -m tfds_hypersim.synthetic --out DIR [--train N --validation N --test N --seed S]
  tfds_hypersim.synthetic.generate(DIR, num_frames={"train": 96, ...}, seed=0)

Files (exactly HyperSim's, one gzip-compressed HDF5 dataset named `dataset` each):
  DIR/ai_VVV_NNN/images/scene_cam_XX_final_hdf5/frame.IIII.color.hdf5              [768,1024,3] float16
  DIR/ai_VVV_NNN/images/scene_cam_XX_geometry_hdf5/frame.IIII.depth_meters.hdf5     [768,1024] float16
  DIR/ai_VVV_NNN/images/scene_cam_XX_geometry_hdf5/frame.IIII.semantic.hdf5         [768,1024] int16
  DIR/ai_VVV_NNN/images/scene_cam_XX_geometry_hdf5/frame.IIII.render_entity_id.hdf5 [768,1024] int16
plus DIR/synthetic_manifest.json (seed, and per frame its split, room size and
camera pose), which HyperSim does not have and the builder ignores.
Scene/camera/frame names are real entries of the paper's split lists
(`splits/semantic_md_split_*.txt`), so the builder's split logic applies as is.

World model
-----------
* World frame: metres, z up. A scene (one `ai_VVV_NNN`) is one box room
  [0,Lx] x [0,Ly] x [0,Hc], Lx, Ly ~ U(3, 9), Hc ~ U(2.4, 3.4). Its four walls
  are NYU40 `wall` (1), the z=0 face `floor` (2), the z=Hc face `ceiling` (22).
* Openings: 1-3 windows and possibly an open doorway are holes in the walls.
  Rays through them leave the room and hit nothing: depth NaN, semantic -1,
  render_entity_id -1, colour = bright sky radiance. Window holes are framed by
  a `window` (9) band, doorways by a `door` (8) band.
* Flush decals (same depth as the surface they lie on, own entity id):
  `picture` (11) and closed `door` (8) rectangles on walls, a `floormat` (20)
  on the floor, and unlabelled (-1) ceiling vents and wall panels.
* Furniture from a room type (bedroom / living / dining / office), axis-aligned
  to the room, with class-typical sizes and places: `bed` (4, low, against a
  wall, headboard) with `pillow`s (18), `nightstand` (32), `cabinet` (3, tall or
  low, against a wall), `sofa` (6, base+back+arms against a wall), `table` (7,
  top at ~0.75 m on four legs, or a low round coffee table), `chair` (5, seat
  block + backrest, around tables), `bookshelf` (10, tall against a wall),
  `television` (25, on a low cabinet), `lamp` (35, pole/base cylinder + sphere
  shade), small props labelled `otherprop` (40) or left unlabelled (-1, with
  geometry). So labels carry depth information (sizes, heights, wall contact).
* Camera: HyperSim's pinhole, f = 886.81 px, principal point at the image centre;
  pixel (i, j) looks along camera-space (X, -Y, -f), X = j + 0.5 - 512,
  Y = i + 0.5 - 384 (camera x right, y up, looking along -z as in HyperSim).
  Per frame: position uniform in the room (>= 0.5 m from walls, >= 0.3 m from
  furniture footprints), height U(1.1, 1.7) m, aimed at the farthest of three
  random points of the room (yaw jitter N(0, 15 deg), pitch jitter N(0, 8 deg),
  pitch clipped to [-45, 10] deg), roll N(0, 2 deg). Depth is the
  Euclidean distance from the camera centre to the first hit (exact vectorised
  ray casting, float32), roughly 0.3-12 m.
* Radiance (linear HDR, float16, typically 0..~2 with windows brighter):
  albedo = per-class base colour, jittered per scene, times a world-space
  procedural texture (floor planks or tiles, painted or striped walls, wood
  grain, fabric weave, pictures of random colour blocks); lighting = ambient +
  1-2 ceiling point lights (Lambert, inverse-square falloff, no shadows) + a
  weak camera-mounted fill light decaying with distance; times a random
  exposure; optional multiplicative pixel noise. Shading and texture scale give
  RGB monocular depth cues, while random albedos/exposure keep it ambiguous.
* Determinism: the room depends only on (seed, scene), the pose only on
  (seed, scene, camera, frame), the chosen frames only on (seed, num_frames,
  frames_per_scene); results do not depend on the number of workers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable

import h5py
import numpy as np
from absl import flags

from smd_jax import cli
from smd_jax.errors import UserError
from tfds_hypersim import metadata, processing

H, W = processing.HEIGHT, processing.WIDTH
FOCAL = processing.FOCAL_PX

# NYU40 ids used by the generator.
WALL, FLOOR, CABINET, BED, CHAIR, SOFA, TABLE, DOOR, WINDOW = 1, 2, 3, 4, 5, 6, 7, 8, 9
BOOKSHELF, PICTURE, PILLOW, FLOORMAT, CEILING = 10, 11, 18, 20, 22
TELEVISION, NIGHTSTAND, LAMP, OTHERPROP = 25, 32, 35, 40
UNLABELLED = -1

# Base albedos (linear RGB) per class; jittered per scene.
_BASE_ALBEDO = {
    WALL: (0.70, 0.68, 0.62), FLOOR: (0.45, 0.32, 0.20), CEILING: (0.85, 0.85, 0.83),
    CABINET: (0.55, 0.40, 0.28), BED: (0.75, 0.75, 0.80), CHAIR: (0.35, 0.25, 0.18),
    SOFA: (0.30, 0.35, 0.50), TABLE: (0.50, 0.34, 0.22), DOOR: (0.60, 0.50, 0.40),
    WINDOW: (0.85, 0.85, 0.85), BOOKSHELF: (0.40, 0.28, 0.18), PICTURE: (0.5, 0.5, 0.5),
    PILLOW: (0.85, 0.82, 0.75), FLOORMAT: (0.55, 0.20, 0.20), TELEVISION: (0.05, 0.05, 0.06),
    NIGHTSTAND: (0.45, 0.30, 0.20), LAMP: (0.90, 0.85, 0.70), OTHERPROP: (0.50, 0.50, 0.50),
    UNLABELLED: (0.50, 0.50, 0.50),
}

DEFAULT_NUM_FRAMES = {"train": 96, "validation": 24, "test": 8}
MANIFEST = "synthetic_manifest.json"

# Room faces: 0: x=0, 1: x=Lx, 2: y=0, 3: y=Ly (walls), 4: floor, 5: ceiling.
_NUM_FACES = 6
_FACE_LABEL = (WALL, WALL, WALL, WALL, FLOOR, CEILING)
_EPS = 1e-4


# ----------------------------------------------------------------------------
# Scene description
# ----------------------------------------------------------------------------

@dataclasses.dataclass
class Prim:
  """A solid. box: (lo xyz, hi xyz); cylinder (vertical): (cx, cy, r, z0, z1);
  sphere: (cx, cy, cz, r)."""
  kind: str
  params: tuple[float, ...]
  label: int
  albedo: tuple[float, float, float]
  material: str = "plain"

  def bounds(self) -> tuple[np.ndarray, np.ndarray]:
    p = self.params
    if self.kind == "box":
      return np.array(p[:3]), np.array(p[3:])
    if self.kind == "cylinder":
      cx, cy, r, z0, z1 = p
      return np.array([cx - r, cy - r, z0]), np.array([cx + r, cy + r, z1])
    cx, cy, cz, r = p
    return np.array([cx - r, cy - r, cz - r]), np.array([cx + r, cy + r, cz + r])


@dataclasses.dataclass
class Rect:
  """Axis-aligned rectangle on a room face, in face coordinates (a, b):
  walls x=const: (y, z); walls y=const: (x, z); floor/ceiling: (x, y).
  kind 'hole' removes geometry; 'decal' relabels/recolours the surface."""
  face: int
  a0: float
  a1: float
  b0: float
  b1: float
  kind: str
  label: int = WALL
  albedo: tuple[float, float, float] = (0.5, 0.5, 0.5)
  material: str = "plain"


@dataclasses.dataclass
class Scene:
  name: str
  size: tuple[float, float, float]            # Lx, Ly, Hc
  face_albedo: list[tuple[float, float, float]]
  face_material: list[str]
  rects: list[Rect]
  prims: list[Prim]
  lights: list[tuple[tuple[float, float, float], float]]  # position, intensity
  ambient: float
  fill: float
  sky: tuple[float, float, float]
  exposure: float
  texture_seed: float
  footprints: list[tuple[float, float, float, float]]  # x0, y0, x1, y1


@dataclasses.dataclass
class Pose:
  position: np.ndarray         # [3] world, metres
  world_from_cam: np.ndarray   # [3,3], columns = camera x (right), y (up), z (backward)


def _stable_int(*parts) -> int:
  return zlib.crc32("/".join(str(p) for p in parts).encode())


def _jitter(rng: np.random.Generator, albedo, amount: float = 0.25):
  a = np.asarray(albedo) * rng.uniform(1 - amount, 1 + amount, 3)
  return tuple(float(x) for x in np.clip(a, 0.02, 0.95))


def _random_color(rng: np.random.Generator):
  return tuple(float(x) for x in rng.uniform(0.08, 0.9, 3))


class _Placer:
  """Places footprints against walls or free-standing, avoiding overlaps."""

  def __init__(self, rng, lx, ly):
    self.rng, self.lx, self.ly = rng, lx, ly
    self.footprints: list[tuple[float, float, float, float]] = []
    self.wall_spans: dict[int, list[tuple[float, float]]] = {f: [] for f in range(4)}

  def _free(self, fp, margin=0.05):
    x0, y0, x1, y1 = fp
    if x0 < 0 or y0 < 0 or x1 > self.lx or y1 > self.ly:
      return False
    return all(x1 + margin <= a0 or a1 + margin <= x0 or y1 + margin <= b0
               or b1 + margin <= y0 for a0, b0, a1, b1 in self.footprints)

  def against_wall(self, width, depth, wall=None, tries=30):
    """(footprint (x0, y0, x1, y1), wall index) of a `width` x `depth` object
    against a random (or the given) wall, or (None, None) if none fits."""
    for _ in range(tries):
      f = int(self.rng.integers(4)) if wall is None else wall
      length = self.ly if f < 2 else self.lx
      if width > length - 0.2:
        continue
      s = self.rng.uniform(0.1, length - width - 0.1)
      if f == 0:
        fp = (0.0, s, depth, s + width)
      elif f == 1:
        fp = (self.lx - depth, s, self.lx, s + width)
      elif f == 2:
        fp = (s, 0.0, s + width, depth)
      else:
        fp = (s, self.ly - depth, s + width, self.ly)
      if self._free(fp):
        self.footprints.append(fp)
        self.wall_spans[f].append((s, s + width))
        return fp, f
    return None, None

  def free_standing(self, sx, sy, tries=30, margin=0.6):
    for _ in range(tries):
      if sx > self.lx - 2 * margin or sy > self.ly - 2 * margin:
        return None
      x0 = self.rng.uniform(margin, self.lx - sx - margin)
      y0 = self.rng.uniform(margin, self.ly - sy - margin)
      fp = (x0, y0, x0 + sx, y0 + sy)
      if self._free(fp, margin=0.4):
        self.footprints.append(fp)
        return fp
    return None


def _box(fp, z0, z1, label, albedo, material="plain"):
  x0, y0, x1, y1 = fp
  return Prim("box", (x0, y0, z0, x1, y1, z1), label, albedo, material)


def _into_room(fp, wall, amount):
  """Sub-footprint of thickness `amount` along the wall side of fp."""
  x0, y0, x1, y1 = fp
  return {0: (x0, y0, x0 + amount, y1), 1: (x1 - amount, y0, x1, y1),
          2: (x0, y0, x1, y0 + amount), 3: (x0, y1 - amount, x1, y1)}[wall]


_FRAME_BAND = 0.07  # metres of `window` / `door` frame around an opening


class _Room:
  """A room being furnished: its random stream, size (metres), footprint placer,
  and the solids and face rectangles added so far.

  Every helper draws from `rng` in a fixed order, so a scene stays a function of
  (seed, name) only as long as the helpers run in the order `make_scene` calls them.
  """

  def __init__(self, rng: np.random.Generator, lx: float, ly: float, hc: float):
    self.rng, self.lx, self.ly, self.hc = rng, lx, ly, hc
    self.placer = _Placer(rng, lx, ly)
    self.prims: list[Prim] = []
    self.rects: list[Rect] = []

  def albedo(self, label: int, amount: float = 0.25):
    """The base albedo of class `label`, each channel scaled by U(1 - amount, 1 + amount)."""
    return _jitter(self.rng, _BASE_ALBEDO[label], amount)

  def wall_length(self, wall: int) -> float:
    """Length in metres of wall `wall` (0, 1: along y; 2, 3: along x)."""
    return self.ly if wall < 2 else self.lx

  def add_against_wall(self, width, depth, z1, label, material="wood", z0=0.0, wall=None):
    """A box of class `label` from z0 to z1 against a (random) wall: (footprint, wall),
    or (None, None) where none fits."""
    fp, f = self.placer.against_wall(width, depth, wall)
    if fp is not None:
      self.prims.append(_box(fp, z0, z1, label, self.albedo(label), material))
    return fp, f

  def free_span(self, wall: int, width: float, blocked_by_furniture: bool):
    """Start (metres along `wall`) of a `width` span clear of the wall's rectangles so
    far (and of furniture against it, if `blocked_by_furniture`); None after 30 tries."""
    spans = list(self.placer.wall_spans[wall]) if blocked_by_furniture else []
    spans += [(r.a0, r.a1) for r in self.rects if r.face == wall]
    for _ in range(30):
      if width > self.wall_length(wall) - 0.4:
        return None
      a0 = self.rng.uniform(0.2, self.wall_length(wall) - width - 0.2)
      if all(a0 + width + 0.15 <= s0 or s1 + 0.15 <= a0 for s0, s1 in spans):
        return a0
    return None


def _surface_looks(room: _Room) -> tuple[list, list[str]]:
  """Albedos and materials of the six room faces (four walls, floor, ceiling)."""
  rng = room.rng
  wall_albedo = _jitter(rng, (0.72, 0.70, 0.64), 0.3)
  face_albedo = [wall_albedo] * 4 + [room.albedo(FLOOR, 0.4), room.albedo(CEILING, 0.08)]
  wall_mat = "stripes" if rng.random() < 0.3 else "paint"
  floor_mat = "tiles" if rng.random() < 0.35 else "planks"
  if floor_mat == "tiles":
    face_albedo[4] = _jitter(rng, (0.6, 0.58, 0.55), 0.3)
  return face_albedo, [wall_mat] * 4 + [floor_mat, "plain"]


def _add_lamp(room: _Room, x, y, z_base, floor_standing):
  """A lamp standing at (x, y, z_base): pole cylinder and sphere shade, floor or table sized."""
  pole_h = 1.4 if floor_standing else 0.3
  room.prims.append(Prim("cylinder", (x, y, 0.03 if floor_standing else 0.08,
                                      z_base, z_base + pole_h), LAMP, room.albedo(LAMP)))
  room.prims.append(Prim("sphere", (x, y, z_base + pole_h + 0.12,
                                    0.2 if floor_standing else 0.14),
                         LAMP, room.albedo(LAMP, 0.1)))


def _add_table(room: _Room, fp, height, round_top=False):
  """A table on footprint fp with its top at `height`: a square top on four legs, or a
  round top on one central leg."""
  x0, y0, x1, y1 = fp
  alb = room.albedo(TABLE)
  if round_top:
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, min(x1 - x0, y1 - y0) / 2
    room.prims.append(Prim("cylinder", (cx, cy, r, height - 0.04, height), TABLE, alb, "wood"))
    room.prims.append(Prim("cylinder", (cx, cy, 0.05, 0.0, height - 0.04), TABLE, alb, "wood"))
    return
  room.prims.append(_box(fp, height - 0.05, height, TABLE, alb, "wood"))
  leg = 0.06
  for lx0, ly0 in ((x0, y0), (x1 - leg, y0), (x0, y1 - leg), (x1 - leg, y1 - leg)):
    room.prims.append(_box((lx0, ly0, lx0 + leg, ly0 + leg), 0.0, height - 0.05, TABLE, alb,
                           "wood"))


def _add_chair_near(room: _Room, tfp):
  """A chair (seat block + backrest) at a random side of the table footprint tfp, facing
  it; nothing where that place is taken."""
  x0, y0, x1, y1 = tfp
  s = 0.45
  side = int(room.rng.integers(4))
  if side == 0:
    fp = (x0 - s - 0.05, (y0 + y1) / 2 - s / 2, x0 - 0.05, (y0 + y1) / 2 + s / 2)
    back = (fp[0], fp[1], fp[0] + 0.06, fp[3])
  elif side == 1:
    fp = (x1 + 0.05, (y0 + y1) / 2 - s / 2, x1 + s + 0.05, (y0 + y1) / 2 + s / 2)
    back = (fp[2] - 0.06, fp[1], fp[2], fp[3])
  elif side == 2:
    fp = ((x0 + x1) / 2 - s / 2, y0 - s - 0.05, (x0 + x1) / 2 + s / 2, y0 - 0.05)
    back = (fp[0], fp[1], fp[2], fp[1] + 0.06)
  else:
    fp = ((x0 + x1) / 2 - s / 2, y1 + 0.05, (x0 + x1) / 2 + s / 2, y1 + s + 0.05)
    back = (fp[0], fp[3] - 0.06, fp[2], fp[3])
  if not room.placer._free(fp, margin=0.0):
    return
  room.placer.footprints.append(fp)
  alb = room.albedo(CHAIR)
  room.prims.append(_box(fp, 0.0, 0.46, CHAIR, alb, "wood"))
  room.prims.append(_box(back, 0.46, 0.95, CHAIR, alb, "wood"))


def _add_bed(room: _Room):
  """A bed against a wall: mattress block, headboard on the wall side, pillow at the head."""
  rng = room.rng
  bw, bl = rng.uniform(1.0, 1.8), rng.uniform(1.9, 2.1)
  fp, f = room.placer.against_wall(bw, bl)
  if fp is None:
    return
  bh = rng.uniform(0.45, 0.6)
  room.prims.append(_box(fp, 0.0, bh, BED, room.albedo(BED), "fabric"))
  room.prims.append(_box(_into_room(fp, f, 0.08), bh, bh + rng.uniform(0.4, 0.7), BED,
                         room.albedo(BED), "wood"))
  hx0, hy0, hx1, hy1 = _into_room(fp, f, 0.5)
  if f < 2:
    head = (hx0 + 0.1 if f == 0 else hx0, hy0 + 0.1, hx1 if f == 0 else hx1 - 0.1, hy1 - 0.1)
  else:
    head = (hx0 + 0.1, hy0 + 0.1 if f == 2 else hy0, hx1 - 0.1, hy1 if f == 2 else hy1 - 0.1)
  room.prims.append(_box(head, bh, bh + 0.12, PILLOW, room.albedo(PILLOW), "fabric"))


def _furnish_bedroom(room: _Room):
  """Bed, one or two nightstands (most with a table lamp) and a tall cabinet."""
  rng = room.rng
  _add_bed(room)
  for _ in range(int(rng.integers(1, 3))):
    nfp, _ = room.add_against_wall(0.45, 0.4, rng.uniform(0.5, 0.6), NIGHTSTAND)
    if nfp is not None and rng.random() < 0.7:
      _add_lamp(room, (nfp[0] + nfp[2]) / 2, (nfp[1] + nfp[3]) / 2, room.prims[-1].params[5],
                False)
  room.add_against_wall(rng.uniform(1.0, 2.0), 0.6, rng.uniform(1.8, 2.2), CABINET)


def _add_sofa(room: _Room):
  """A sofa against a wall: seat block, backrest on the wall side, an arm at each end."""
  rng = room.rng
  sw, sd = rng.uniform(1.8, 2.4), 0.9
  fp, f = room.placer.against_wall(sw, sd)
  if fp is None:
    return
  alb = room.albedo(SOFA)
  room.prims.append(_box(fp, 0.0, 0.42, SOFA, alb, "fabric"))
  room.prims.append(_box(_into_room(fp, f, 0.22), 0.42, 0.85, SOFA, alb, "fabric"))
  x0, y0, x1, y1 = fp
  arms = ([(x0, y0, x1, y0 + 0.2), (x0, y1 - 0.2, x1, y1)] if f < 2
          else [(x0, y0, x0 + 0.2, y1), (x1 - 0.2, y0, x1, y1)])
  for a in arms:
    room.prims.append(_box(a, 0.42, 0.62, SOFA, alb, "fabric"))


def _add_tv_stand(room: _Room):
  """A low cabinet against a wall with a television (16:9-ish box) standing on it."""
  rng = room.rng
  cfp, cf = room.add_against_wall(rng.uniform(1.2, 1.8), 0.45, rng.uniform(0.45, 0.6), CABINET)
  if cfp is None:
    return
  top = room.prims[-1].params[5]
  tv_w = min(rng.uniform(0.9, 1.4), (cfp[2] - cfp[0]) if cf >= 2 else (cfp[3] - cfp[1]))
  x0, y0, x1, y1 = _into_room(cfp, cf, 0.08)
  if cf < 2:
    cy = (y0 + y1) / 2
    tv = (x0, cy - tv_w / 2, x1, cy + tv_w / 2)
  else:
    cx = (x0 + x1) / 2
    tv = (cx - tv_w / 2, y0, cx + tv_w / 2, y1)
  room.prims.append(_box(tv, top, top + tv_w * 0.58, TELEVISION, room.albedo(TELEVISION, 0.1)))


def _furnish_living(room: _Room):
  """Sofa, low coffee table (square or round), TV on a cabinet, floor lamp, maybe a bookshelf."""
  rng = room.rng
  _add_sofa(room)
  tfp = room.placer.free_standing(rng.uniform(0.6, 1.1), rng.uniform(0.6, 1.1))
  if tfp is not None:
    _add_table(room, tfp, rng.uniform(0.4, 0.5), round_top=rng.random() < 0.5)
  _add_tv_stand(room)
  lfp = room.placer.free_standing(0.4, 0.4, margin=0.3)
  if lfp is not None:
    _add_lamp(room, (lfp[0] + lfp[2]) / 2, (lfp[1] + lfp[3]) / 2, 0.0, True)
  if rng.random() < 0.6:
    room.add_against_wall(rng.uniform(0.8, 1.6), 0.35, rng.uniform(1.6, 2.2), BOOKSHELF, "shelf")


def _furnish_table_room(room: _Room, table_x, table_y, min_chairs: int):
  """A U(table_x) x U(table_y) m table with min_chairs..4 chairs around it, then one or two
  bookshelves or cabinets against the walls."""
  rng = room.rng
  sx, sy = rng.uniform(*table_x), rng.uniform(*table_y)
  tfp = room.placer.free_standing(sx, sy, margin=0.9)
  if tfp is not None:
    _add_table(room, tfp, rng.uniform(0.72, 0.77))
    for _ in range(int(rng.integers(min_chairs, 5))):
      _add_chair_near(room, tfp)
  for _ in range(int(rng.integers(1, 3))):
    if rng.random() < 0.5:
      room.add_against_wall(rng.uniform(0.8, 1.6), 0.35, rng.uniform(1.6, 2.2), BOOKSHELF,
                            "shelf")
    else:
      room.add_against_wall(rng.uniform(0.8, 2.0), 0.5, rng.uniform(0.8, 2.0), CABINET)


# Room type -> furnishing. The room type is drawn as an index into this order.
_FURNISH: dict[str, Callable[[_Room], None]] = {
    "bedroom": _furnish_bedroom,
    "living": _furnish_living,
    "dining": functools.partial(_furnish_table_room, table_x=(1.2, 2.0), table_y=(0.8, 1.1),
                                min_chairs=2),
    "office": functools.partial(_furnish_table_room, table_x=(1.0, 1.6), table_y=(0.6, 0.8),
                                min_chairs=1),
}


def _add_floor_props(room: _Room):
  """Zero to two small boxes or balls on the floor, `otherprop` or unlabelled geometry."""
  rng = room.rng
  for _ in range(int(rng.integers(0, 3))):
    s = rng.uniform(0.2, 0.45)
    fp = room.placer.free_standing(s, s, margin=0.3)
    if fp is None:
      continue
    label = OTHERPROP if rng.random() < 0.5 else UNLABELLED
    if rng.random() < 0.5:
      room.prims.append(_box(fp, 0.0, rng.uniform(0.2, 0.5), label, _random_color(rng)))
    else:
      room.prims.append(Prim("sphere", ((fp[0] + fp[2]) / 2, (fp[1] + fp[3]) / 2, s / 2, s / 2),
                             label, _random_color(rng)))


def _add_windows(room: _Room):
  """One to three window holes in the walls, each framed by a `window` band."""
  rng, band = room.rng, _FRAME_BAND
  for _ in range(int(rng.integers(1, 4))):
    f = int(rng.integers(4))
    wdt = rng.uniform(0.8, 2.0)
    a0 = room.free_span(f, wdt + 2 * band, blocked_by_furniture=False)
    if a0 is None:
      continue
    z0, z1 = rng.uniform(0.7, 1.0), min(rng.uniform(1.9, 2.3), room.hc - 0.25)
    room.rects.append(Rect(f, a0 + band, a0 + band + wdt, z0, z1, "hole"))
    room.rects.append(Rect(f, a0, a0 + wdt + 2 * band, z0 - band, z1 + band, "decal", WINDOW,
                           room.albedo(WINDOW, 0.1)))


def _add_door(room: _Room):
  """Maybe a 0.9 x 2.05 m door in a free wall span: an open doorway (hole) or a closed
  leaf (decal), framed by a `door` band."""
  rng, band = room.rng, _FRAME_BAND
  if rng.random() >= 0.6:
    return
  f = int(rng.integers(4))
  a0 = room.free_span(f, 0.9 + 2 * band, blocked_by_furniture=True)
  if a0 is None:
    return
  kind_open = rng.random() < 0.6
  room.rects.append(Rect(f, a0 + band, a0 + band + 0.9, 0.0, 2.05,
                         "hole" if kind_open else "decal", DOOR, room.albedo(DOOR), "wood"))
  room.rects.append(Rect(f, a0, a0 + 0.9 + 2 * band, 0.0, 2.05 + band, "decal", DOOR,
                         room.albedo(DOOR)))
  if not kind_open:  # keep the door leaf on top of its frame
    room.rects.append(room.rects.pop(-2))


def _add_pictures(room: _Room):
  """One to three pictures (random colour blocks) hung on the walls."""
  rng = room.rng
  for _ in range(int(rng.integers(1, 4))):
    f = int(rng.integers(4))
    pw, ph = rng.uniform(0.4, 1.2), rng.uniform(0.3, 0.9)
    a0 = room.free_span(f, pw, blocked_by_furniture=False)
    if a0 is None:
      continue
    zc = rng.uniform(1.3, min(1.8, room.hc - ph / 2 - 0.2))
    room.rects.append(Rect(f, a0, a0 + pw, zc - ph / 2, zc + ph / 2, "decal", PICTURE,
                           _random_color(rng), "picture"))


def _add_unlabelled_details(room: _Room):
  """Ceiling vents and small wall panels with geometry but semantic -1, as HyperSim
  leaves many small fixtures unannotated."""
  rng = room.rng
  for _ in range(int(rng.integers(1, 3))):
    v = rng.uniform(0.3, 0.7)
    x0, y0 = rng.uniform(0.3, room.lx - v - 0.3), rng.uniform(0.3, room.ly - v - 0.3)
    room.rects.append(Rect(5, x0, x0 + v, y0, y0 + v, "decal", UNLABELLED,
                           _jitter(rng, (0.6, 0.6, 0.62), 0.2), "shelf"))
  for _ in range(int(rng.integers(1, 5))):
    f = int(rng.integers(4))
    pw = rng.uniform(0.15, 0.5)
    a0 = room.free_span(f, pw, blocked_by_furniture=True)
    if a0 is not None:
      z0 = rng.uniform(0.2, 1.2)
      room.rects.append(Rect(f, a0, a0 + pw, z0, z0 + rng.uniform(0.1, 0.4), "decal",
                             UNLABELLED, _random_color(rng)))


def _add_floormat(room: _Room):
  """Maybe a `floormat` rectangle on the floor, at least 0.5 m from the walls."""
  rng, lx, ly = room.rng, room.lx, room.ly
  if rng.random() < 0.5:
    mx, my = rng.uniform(1.0, min(2.5, lx - 1)), rng.uniform(0.8, min(2.0, ly - 1))
    x0, y0 = rng.uniform(0.5, lx - mx - 0.5), rng.uniform(0.5, ly - my - 0.5)
    room.rects.append(Rect(4, x0, x0 + mx, y0, y0 + my, "decal", FLOORMAT,
                           room.albedo(FLOORMAT, 0.5), "fabric"))


def _ceiling_lights(room: _Room) -> list[tuple[tuple[float, float, float], float]]:
  """[(position, intensity)] of one point light (two in rooms over 25 m^2), 0.15 m below
  the ceiling."""
  rng, lx, ly = room.rng, room.lx, room.ly
  n_lights = 1 if lx * ly < 25 else 2
  lights = []
  for k in range(n_lights):
    pos = (rng.uniform(0.3, 0.7) * lx if n_lights == 1 else (k + 0.5) / n_lights * lx,
           rng.uniform(0.3, 0.7) * ly, room.hc - 0.15)
    lights.append((tuple(float(v) for v in pos), float(rng.uniform(2.0, 5.0))))
  return lights


def make_scene(name: str, seed: int) -> Scene:
  """The room of scene `name`; depends only on (seed, name)."""
  rng = np.random.default_rng([seed, _stable_int("scene", name)])
  lx, ly, hc = rng.uniform(3.0, 9.0), rng.uniform(3.0, 9.0), rng.uniform(2.4, 3.4)
  room = _Room(rng, lx, ly, hc)
  face_albedo, face_material = _surface_looks(room)
  room_type = list(_FURNISH)[int(rng.integers(len(_FURNISH)))]
  _FURNISH[room_type](room)
  _add_floor_props(room)
  # Openings first, so that decals keep clear of them.
  _add_windows(room)
  _add_door(room)
  _add_pictures(room)
  _add_unlabelled_details(room)
  _add_floormat(room)
  lights = _ceiling_lights(room)
  sky = tuple(float(v) for v in np.array([0.8, 0.9, 1.1]) * rng.uniform(2.0, 6.0))
  return Scene(
      name=name, size=(float(lx), float(ly), float(hc)), face_albedo=face_albedo,
      face_material=face_material, rects=room.rects, prims=room.prims, lights=lights,
      ambient=float(rng.uniform(0.08, 0.2)), fill=float(rng.uniform(0.1, 0.4)),
      sky=sky, exposure=float(np.exp(rng.normal(0.0, 0.4))),
      texture_seed=float(rng.uniform(0, 100)), footprints=list(room.placer.footprints))


def make_pose(scene: Scene, seed: int, camera: str, frame: int) -> Pose:
  """Camera pose of a frame; depends only on (seed, scene, camera, frame)."""
  rng = np.random.default_rng([seed, _stable_int("pose", scene.name, camera, frame)])
  lx, ly, _ = scene.size
  for _ in range(200):
    x, y = rng.uniform(0.5, lx - 0.5), rng.uniform(0.5, ly - 0.5)
    if all(not (x0 - 0.3 < x < x1 + 0.3 and y0 - 0.3 < y < y1 + 0.3)
           for x0, y0, x1, y1 in scene.footprints):
      break
  z = rng.uniform(1.1, 1.7)
  # Look at the farthest of three random points in the room, like a
  # photographer looking across it, plus some jitter.
  targets = np.stack([rng.uniform(0.0, lx, 3), rng.uniform(0.0, ly, 3),
                      rng.uniform(0.2, 1.4, 3)], axis=1)
  target = targets[np.argmax(np.linalg.norm(targets[:, :2] - [x, y], axis=1))]
  v = target - [x, y, z]
  yaw = math.atan2(v[1], v[0]) + rng.normal(0.0, math.radians(15))
  pitch = math.atan2(v[2], math.hypot(v[0], v[1])) + rng.normal(0.0, math.radians(8))
  pitch = min(max(pitch, math.radians(-45.0)), math.radians(10.0))
  roll = rng.normal(0.0, math.radians(2.0))
  fwd = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw),
                  math.sin(pitch)])
  right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
  up = np.cross(right, fwd)
  c, s = math.cos(roll), math.sin(roll)
  right, up = c * right + s * up, -s * right + c * up
  world_from_cam = np.stack([right, up, -fwd], axis=1)
  return Pose(position=np.array([x, y, z]), world_from_cam=world_from_cam)


# ----------------------------------------------------------------------------
# Ray casting
# ----------------------------------------------------------------------------

def _pixel_grid():
  x = np.arange(W, dtype=np.float32) + 0.5 - W / 2
  y = np.arange(H, dtype=np.float32) + 0.5 - H / 2
  inv_norm = 1.0 / np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + np.float32(FOCAL) ** 2)
  return x, y, inv_norm.astype(np.float32)


_GRID = None


def ray_directions(pose: Pose, rows: slice = slice(None)
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Unit world-space ray directions of image `rows`, three [h,W] float32 arrays."""
  global _GRID
  if _GRID is None:
    _GRID = _pixel_grid()
  x, y, inv_norm = _GRID
  y, inv_norm = y[rows], inv_norm[rows]
  r = pose.world_from_cam.astype(np.float32)
  # camera-space direction (X, -Y, -f)
  out = []
  for k in range(3):
    d = (r[k, 0] * x)[None, :] - (r[k, 1] * y)[:, None] - np.float32(r[k, 2] * FOCAL)
    out.append(d * inv_norm)
  return tuple(out)


def _hit_box(o, d, inv, p):
  with np.errstate(invalid="ignore"):
    tn, tf = None, None
    for k in range(3):
      t1 = np.float32(p[k] - o[k]) * inv[k]
      t2 = np.float32(p[k + 3] - o[k]) * inv[k]
      lo, hi = np.fmin(t1, t2), np.fmax(t1, t2)
      tn = lo if tn is None else np.fmax(tn, lo)
      tf = hi if tf is None else np.fmin(tf, hi)
  return np.where((tn <= tf) & (tn > _EPS), tn, np.float32(np.inf))


def _hit_sphere(o, d, inv, p):
  dx, dy, dz = d
  ex, ey, ez = (np.float32(o[k] - p[k]) for k in range(3))
  b = ex * dx + ey * dy + ez * dz
  c = np.float32(ex * ex + ey * ey + ez * ez - p[3] ** 2)
  disc = b * b - c
  with np.errstate(invalid="ignore"):
    t = -b - np.sqrt(disc)
  return np.where((disc >= 0) & (t > _EPS), t, np.float32(np.inf))


def _hit_cylinder(o, d, inv, p):
  dx, dy, dz = d
  cx, cy, r, z0, z1 = p
  ex, ey = np.float32(o[0] - cx), np.float32(o[1] - cy)
  a = dx * dx + dy * dy
  b = ex * dx + ey * dy
  c = np.float32(ex * ex + ey * ey - r * r)
  disc = b * b - a * c
  inf = np.float32(np.inf)
  with np.errstate(invalid="ignore", divide="ignore"):
    t = (-b - np.sqrt(disc)) / a
    zt = np.float32(o[2]) + t * dz
    t_side = np.where((disc >= 0) & (a > 0) & (t > _EPS) & (zt >= z0) & (zt <= z1), t, inf)
    best = t_side
    for zc in (z0, z1):
      tc = np.float32(zc - o[2]) * inv[2]
      qx, qy = ex + tc * dx, ey + tc * dy
      ok = (tc > _EPS) & (qx * qx + qy * qy <= np.float32(r * r))
      best = np.minimum(best, np.where(ok, tc, inf))
  return best


_HIT = {"box": _hit_box, "sphere": _hit_sphere, "cylinder": _hit_cylinder}


def _screen_rect(pose: Pose, lo, hi):
  """Pixel window (rows slice, cols slice) containing the projection of the
  box [lo, hi]; None if it is entirely behind the camera."""
  corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                      for z in (lo[2], hi[2])])
  cam = (corners - pose.position) @ pose.world_from_cam  # camera coords
  fwd = -cam[:, 2]
  if np.all(fwd <= 1e-3):
    return None
  if np.any(fwd <= 0.05):
    return slice(0, H), slice(0, W)
  cols = FOCAL * cam[:, 0] / fwd + W / 2 - 0.5
  rows = -FOCAL * cam[:, 1] / fwd + H / 2 - 0.5
  c0, c1 = int(math.floor(cols.min())) - 1, int(math.ceil(cols.max())) + 2
  r0, r1 = int(math.floor(rows.min())) - 1, int(math.ceil(rows.max())) + 2
  c0, r0 = max(c0, 0), max(r0, 0)
  c1, r1 = min(c1, W), min(r1, H)
  if c0 >= c1 or r0 >= r1:
    return None
  return slice(r0, r1), slice(c0, c1)


def _rect_bounds(r: Rect, size) -> tuple[np.ndarray, np.ndarray]:
  """World-space bounds of a rectangle on a room face."""
  if r.face < 4:
    c = 0.0 if r.face % 2 == 0 else size[r.face // 2]
    if r.face < 2:
      return np.array([c, r.a0, r.b0]), np.array([c, r.a1, r.b1])
    return np.array([r.a0, c, r.b0]), np.array([r.a1, c, r.b1])
  c = 0.0 if r.face == 4 else size[2]
  return np.array([r.a0, r.b0, c]), np.array([r.a1, r.b1, c])


def _face_coords(face, px, py, pz):
  if face < 2:
    return py, pz
  if face < 4:
    return px, pz
  return px, py


def _hash(k, seed):
  """Pseudo-random values in [0, 1) from k (the common fract(sin(x) * 43758.5453) hash)."""
  return np.modf(np.abs(np.sin(k * np.float32(12.9898) + np.float32(seed)))
                 * np.float32(43758.547))[0]


def _texture(material, a, b, c, seed):
  """Albedo multiplier [n] or [n,3] for surface points in (a, b, c) coordinates
  (the two in-surface coordinates first where it matters)."""
  two_pi = np.float32(2 * np.pi)
  if material == "planks":
    w = np.float32(0.15)
    k = np.floor(b / w)
    v = 0.75 + 0.5 * _hash(k, seed)
    seam = ((b / w) % 1.0 < 0.05) | (((a + 1.3 * _hash(k + 7, seed)) / 1.3) % 1.0 < 0.012)
    grain = 1.0 + 0.06 * np.sin(two_pi * (b * 25.0 + 0.8 * np.sin(a * 3.0)))
    return np.where(seam, 0.45, v * grain)
  if material == "tiles":
    s = np.float32(0.45)
    fa, fb = (a / s) % 1.0, (b / s) % 1.0
    grout = (fa < 0.03) | (fb < 0.03)
    check = 1.0 + 0.07 * ((np.floor(a / s) + np.floor(b / s)) % 2 - 0.5)
    return np.where(grout, 0.55, check)
  if material == "paint":
    return 1.0 + 0.04 * np.sin(two_pi * a / 1.7 + seed) * np.sin(two_pi * b / 1.3)
  if material == "stripes":
    return np.where(np.sin(two_pi * a / 0.18 + seed) > 0, 1.0, 0.82)
  if material == "wood":
    return 1.0 + 0.1 * np.sin(two_pi * ((a + c) * 6.0 + 0.6 * np.sin(b * 5.0)))
  if material == "fabric":
    return 1.0 + 0.05 * np.sin(two_pi * (a + c) / 0.04) * np.sin(two_pi * b / 0.04)
  if material == "shelf":
    return np.where((b % 0.35) < 0.03, 0.6, 1.0 - 0.3 * _hash(np.floor((a + c) / 0.05), seed))
  if material == "picture":
    k = np.floor(a / 0.12) * 31.0 + np.floor(b / 0.12)
    return np.stack([0.3 + 1.4 * _hash(k + 3 * i, seed) for i in range(3)], axis=-1)
  return np.ones_like(a)


def render(scene: Scene, pose: Pose, tile_rows: int = 128) -> dict[str, np.ndarray]:
  """Ray-casts a frame. Returns color [H,W,3] float32 (linear radiance),
  depth [H,W] float32 (metres, NaN = no geometry), semantic [H,W] int16,
  entity [H,W] int16 (-1 = no geometry).

  Works on bands of `tile_rows` rows so that the many temporaries stay in
  cache; the result does not depend on the band height.
  """
  size = scene.size
  windows = {}
  for i, r in enumerate(scene.rects):
    if r.kind == "hole":
      windows[("hole", i)] = _screen_rect(pose, *_rect_bounds(r, size))
  for k, prim in enumerate(scene.prims):
    windows[("prim", k)] = _screen_rect(pose, *prim.bounds())
  out = {"color": np.empty((H, W, 3), np.float32), "depth": np.empty((H, W), np.float32),
         "semantic": np.empty((H, W), np.int16), "entity": np.empty((H, W), np.int16)}
  for r0 in range(0, H, tile_rows):
    r1 = min(r0 + tile_rows, H)
    band = _render_rows(scene, pose, r0, r1, windows)
    for k, v in band.items():
      out[k][r0:r1] = v
  return out


def _band_window(win, r0: int, r1: int):
  """A full-image (rows, cols) window restricted to rows [r0, r1), in band
  coordinates; None if empty."""
  if win is None:
    return None
  rows, cols = win
  a, b = max(rows.start, r0), min(rows.stop, r1)
  if a >= b:
    return None
  return slice(a - r0, b - r0), cols


def _room_exit(o, d, inv, size) -> tuple[np.ndarray, np.ndarray]:
  """Where rays from `o` inside the room box [0, size] leave it: distance t [h,W] float32
  (metres) and the face crossed, pid [h,W] int16 (0-5, the order of _FACE_LABEL)."""
  dx, dy, dz = d
  # The camera is inside the box, so the first hit is where the ray exits it:
  # per axis the larger of the two plane distances (+inf if parallel).
  with np.errstate(invalid="ignore"):
    tx, ty, tz = (np.maximum(np.float32(-o[k]) * inv[k],
                             np.float32(size[k] - o[k]) * inv[k]) for k in range(3))
  tyz = np.minimum(ty, tz)
  t = np.minimum(tx, tyz)
  pid = np.where(tx <= tyz, (dx > 0).view(np.int8),
                 np.where(ty <= tz, 2 + (dy > 0).view(np.int8),
                          4 + (dz > 0).view(np.int8))).astype(np.int16)
  return t, pid


def _cut_holes(scene: Scene, o, d, t, pid, windows: dict, r0: int, r1: int) -> None:
  """Windows and open doorways leave no geometry on their wall: sets t = inf and
  pid = -1 (in place) where a ray's wall hit lies inside a hole."""
  inf = np.float32(np.inf)
  for i, r in enumerate(scene.rects):
    if r.kind != "hole":
      continue
    win = _band_window(windows[("hole", i)], r0, r1)
    if win is None:
      continue
    tw = t[win]
    pa = [np.float32(o[k]) + tw * dk[win] for k, dk in enumerate(d)]
    a, b = _face_coords(r.face, *pa)
    m = (pid[win] == r.face) & (a >= r.a0) & (a <= r.a1) & (b >= r.b0) & (b <= r.b1)
    t[win] = np.where(m, inf, tw)
    pid[win] = np.where(m, np.int16(-1), pid[win])


def _hit_prims(scene: Scene, o, d, inv, t, pid, windows: dict, r0: int, r1: int) -> None:
  """Lowers t (in place) to each object's hit distance where it is closer, with pid its
  surface id _NUM_FACES + k; each object is tested only inside its projected screen window."""
  dx, dy, dz = d
  for k, prim in enumerate(scene.prims):
    win = _band_window(windows[("prim", k)], r0, r1)
    if win is None:
      continue
    tk = _HIT[prim.kind](o, (dx[win], dy[win], dz[win]),
                         (inv[0][win], inv[1][win], inv[2][win]), prim.params)
    tw = t[win]
    closer = tk < tw
    t[win] = np.where(closer, tk, tw)
    pid[win] = np.where(closer, np.int16(_NUM_FACES + k), pid[win])


def _as_rgb(tex: np.ndarray) -> np.ndarray:
  """A texture multiplier [n] or [n,3] as [n,1] or [n,3], to scale [n,3] albedos."""
  return tex[:, None] if tex.ndim == 1 else tex


def _room_face_look(scene: Scene, face: int, x, y, z, seed):
  """Albedo [n,3] float32, semantic [n] int16 and entity [n] int16 of points (x, y, z)
  on room face `face`, with the face's decals painted over it in list order."""
  a, b = _face_coords(face, x, y, z)
  zero = np.zeros_like(a)
  col = np.asarray(scene.face_albedo[face], np.float32) * _as_rgb(
      _texture(scene.face_material[face], a, b, zero, seed))
  lab = np.full(a.size, _FACE_LABEL[face], np.int16)
  ent = np.full(a.size, face, np.int16)
  decal_base = _NUM_FACES + len(scene.prims)  # decals get entity ids after the solids
  for ri, r in enumerate(scene.rects):
    if r.face != face or r.kind != "decal":
      continue
    m = (a >= r.a0) & (a <= r.a1) & (b >= r.b0) & (b <= r.b1)
    if not m.any():
      continue
    lab[m] = r.label
    ent[m] = decal_base + ri
    col[m] = np.asarray(r.albedo, np.float32) * _as_rgb(
        _texture(r.material, a[m], b[m], zero[m], seed + ri))
  return col, lab, ent


def _box_surface(p, x, y, z):
  """Outward unit normal (three [n] arrays) and texture coordinates (a, b, c) of points
  on the box p = (lo xyz, hi xyz); the face is the one the point lies closest to."""
  dist = np.stack([x - p[0], p[3] - x, y - p[1], p[4] - y, z - p[2], p[5] - z])
  face = np.argmin(np.abs(dist), axis=0)
  axis = face // 2
  sign = np.where(face % 2 == 0, np.float32(-1.0), np.float32(1.0))
  normal = tuple(np.where(axis == k, sign, np.float32(0.0)) for k in range(3))
  on_z = axis == 2
  a = np.where(on_z | (axis == 1), x, y)  # in-face coordinates
  b = np.where(on_z, y, z)
  return normal, (a, b, np.zeros_like(a))


def _sphere_surface(p, x, y, z):
  """Outward unit normal and texture coordinates of points on the sphere p = (c xyz, r)."""
  inv_r = np.float32(1.0 / p[3])
  return ((x - p[0]) * inv_r, (y - p[1]) * inv_r, (z - p[2]) * inv_r), (x, z, y)


def _cylinder_surface(p, x, y, z):
  """Outward unit normal (side or caps) and texture coordinates of points on the vertical
  cylinder p = (cx, cy, r, z0, z1)."""
  cx, cy, r, z0, z1 = p
  side = (z > z0 + 1e-3) & (z < z1 - 1e-3)
  normal = (np.where(side, (x - cx) / np.float32(r), 0.0),
            np.where(side, (y - cy) / np.float32(r), 0.0),
            np.where(side, 0.0, np.where(z >= z1 - 1e-3, 1.0, -1.0)))
  return normal, (x, z, y)


_PRIM_SURFACE = {"box": _box_surface, "sphere": _sphere_surface, "cylinder": _cylinder_surface}


def _surface_attributes(scene: Scene, ps, starts: np.ndarray):
  """Normals (three [n] float32), albedo [n,3] float32, semantic and entity [n] int16 of
  the surface points ps (three [n] arrays) sorted by surface id: surface s holds
  [starts[s + 1], starts[s + 2]); the first starts[1] points hit nothing (-1, zeros)."""
  n_pix = ps[0].size
  seed = np.float32(scene.texture_seed)
  nrm = [np.zeros(n_pix, np.float32) for _ in range(3)]
  alb = np.zeros((n_pix, 3), np.float32)
  label = np.full(n_pix, -1, np.int16)
  entity = np.full(n_pix, -1, np.int16)
  for s in range(_NUM_FACES + len(scene.prims)):
    sl = slice(starts[s + 1], starts[s + 2])
    if sl.start == sl.stop:
      continue
    x, y, z = ps[0][sl], ps[1][sl], ps[2][sl]
    if s < _NUM_FACES:
      axis = s // 2 if s < 4 else 2
      nrm[axis][sl] = 1.0 if s in (0, 2, 4) else -1.0
      alb[sl], label[sl], entity[sl] = _room_face_look(scene, s, x, y, z, seed)
      continue
    prim = scene.prims[s - _NUM_FACES]
    normal, (a, b, c) = _PRIM_SURFACE[prim.kind](prim.params, x, y, z)
    for k in range(3):
      nrm[k][sl] = normal[k]
    alb[sl] = np.asarray(prim.albedo, np.float32) * _as_rgb(
        _texture(prim.material, a, b, c, seed + s))
    label[sl] = prim.label
    entity[sl] = s
  return nrm, alb, label, entity


def _irradiance(scene: Scene, ps, ds, ts, nrm) -> np.ndarray:
  """Irradiance [n] float32 at points ps with normals nrm seen along ds at distance ts:
  ambient + ceiling point lights (Lambert, softened 1/d^2) + a camera fill light."""
  irr = np.full(ts.size, scene.ambient, np.float32)
  for pos, power in scene.lights:
    v = [np.float32(pos[k]) - ps[k] for k in range(3)]
    d2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2]
    ndl = (nrm[0] * v[0] + nrm[1] * v[1] + nrm[2] * v[2]) / np.sqrt(d2 + np.float32(1e-6))
    irr += np.float32(power) * np.maximum(ndl, 0.0) / (d2 + np.float32(0.3))
  cos_cam = np.maximum(-(nrm[0] * ds[0] + nrm[1] * ds[1] + nrm[2] * ds[2]), 0.0)
  irr += np.float32(scene.fill) * cos_cam / (1.0 + (ts * np.float32(0.25)) ** 2)
  return irr


def _shade(scene: Scene, o, d, t, pid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Colour [n,3] float32 (linear radiance), semantic [n] int16 and entity [n] int16 of
  the band's n = h*W pixels (row-major), from the rays d, hit distance t and surface
  id pid [h,W] (-1 = no geometry)."""
  # Shade in "sorted space": pixels grouped by surface id, so that every
  # surface is one contiguous slice; scatter back to the image once at the end.
  n_ids = _NUM_FACES + len(scene.prims)
  flat_pid = pid.ravel()
  order = np.argsort(flat_pid, kind="stable")
  counts = np.bincount(flat_pid.astype(np.int64) + 1, minlength=n_ids + 1)
  starts = np.concatenate([[0], np.cumsum(counts)])
  n_sky = int(counts[0])
  ts = t.ravel()[order]
  ts[:n_sky] = 0.0
  ds = [dk.ravel()[order] for dk in d]
  ps = [np.float32(o[k]) + ts * ds[k] for k in range(3)]
  nrm, alb, label, entity = _surface_attributes(scene, ps, starts)
  color_s = alb * _irradiance(scene, ps, ds, ts, nrm)[:, None]
  # No geometry: sky, brighter towards the zenith.
  color_s[:n_sky] = np.asarray(scene.sky, np.float32)[None, :] * (
      0.6 + 0.8 * np.clip(ds[2][:n_sky, None], 0.0, 1.0))
  color_s *= np.float32(scene.exposure)
  color = np.empty_like(color_s)
  color[order] = color_s
  sem = np.empty_like(label)
  sem[order] = label
  ent = np.empty_like(entity)
  ent[order] = entity
  return color, sem, ent


def _render_rows(scene: Scene, pose: Pose, r0: int, r1: int, windows: dict
                 ) -> dict[str, np.ndarray]:
  """`render` for image rows [r0, r1)."""
  d = ray_directions(pose, slice(r0, r1))
  o = pose.position.astype(np.float64)
  with np.errstate(divide="ignore"):
    inv = tuple(np.float32(1.0) / dk for dk in d)
  t, pid = _room_exit(o, d, inv, scene.size)
  _cut_holes(scene, o, d, t, pid, windows, r0, r1)
  _hit_prims(scene, o, d, inv, t, pid, windows, r0, r1)
  valid = np.isfinite(t)
  pid = np.where(valid, pid, -1).astype(np.int16)
  color, sem, ent = _shade(scene, o, d, t, pid)
  h = r1 - r0
  return {
      "color": color.reshape(h, W, 3),
      "depth": np.where(valid, t, np.float32(np.nan)).astype(np.float32),
      "semantic": sem.reshape(h, W),
      "entity": ent.reshape(h, W),
  }


# ----------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------

def _write_hdf5(path: str, array: np.ndarray, level: int) -> None:
  # Tiles spanning all channels: h5py's automatic chunks split colour channels,
  # which makes files ~20% larger and twice as slow to read.
  chunks = (min(96, array.shape[0]), min(128, array.shape[1])) + array.shape[2:]
  with h5py.File(path, "w") as f:
    f.create_dataset("dataset", data=array, chunks=chunks, compression="gzip",
                     compression_opts=level)


def write_frame(root: str | os.PathLike, scene: str, camera: str, frame: int,
                arrays: dict[str, np.ndarray], *, level: int = 4) -> None:
  """Writes rendered arrays as HyperSim's four HDF5 files (float16 / int16)."""
  out = {
      processing.COLOR: arrays["color"].astype(np.float16),
      processing.DEPTH: arrays["depth"].astype(np.float16),
      processing.SEMANTIC: arrays["semantic"].astype(np.int16),
      processing.ENTITY: arrays["entity"].astype(np.int16),
  }
  for kind, array in out.items():
    path = processing.frame_path(root, scene, camera, frame, kind)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_hdf5(path, array, level)


def choose_frames(num_frames: dict[str, int], seed: int = 0,
                  frames_per_scene: int = 6) -> dict[str, list[metadata.FrameId]]:
  """Picks real (scene, camera, frame) entries of the paper's split lists.

  Per split: ceil(n / frames_per_scene) scenes chosen at random among those
  with enough listed frames, the n frames spread evenly over them.
  """
  chosen = {}
  for split_index, split in enumerate(metadata.SPLIT_FILES):
    n = int(num_frames.get(split, 0))
    if n <= 0:
      continue
    rng = np.random.default_rng([seed, 7919, split_index])
    by_scene: dict[str, list[metadata.FrameId]] = {}
    for entry in metadata.split_frames(split):
      by_scene.setdefault(entry[0], []).append(entry)
    n_scenes = min(math.ceil(n / frames_per_scene), len(by_scene))
    need = math.ceil(n / n_scenes)
    eligible = [s for s, e in by_scene.items() if len(e) >= need]
    if len(eligible) < n_scenes:
      raise ValueError(f"cannot pick {n} {split} frames with {frames_per_scene} per scene")
    scenes = sorted(rng.choice(len(eligible), size=n_scenes, replace=False))
    frames = []
    for i, si in enumerate(scenes):
      entries = by_scene[eligible[si]]
      k = n // n_scenes + (1 if i < n % n_scenes else 0)
      picks = sorted(rng.choice(len(entries), size=k, replace=False))
      frames.extend(entries[p] for p in picks)
    chosen[split] = frames
  return chosen


def _make_frame(job) -> dict:
  """Renders and writes one frame (runs in worker processes)."""
  root, split, scene_name, camera, frame, seed, noise, level, color_step = job
  scene = make_scene(scene_name, seed)
  pose = make_pose(scene, seed, camera, frame)
  arrays = render(scene, pose)
  if noise > 0:
    rng = np.random.default_rng([seed, _stable_int("noise", scene_name, camera, frame)])
    gain = 1.0 + np.float32(noise) * rng.standard_normal(arrays["color"].shape, np.float32)
    arrays["color"] = arrays["color"] * np.maximum(gain, 0.0)
  if color_step > 0:
    arrays["color"] = np.round(arrays["color"] / np.float32(color_step)) * np.float32(color_step)
  write_frame(root, scene_name, camera, frame, arrays, level=level)
  return {
      "split": split, "scene": scene_name, "camera": camera, "frame": frame,
      "room_size": list(scene.size), "position": pose.position.tolist(),
      "world_from_cam": pose.world_from_cam.tolist(), "focal_px": FOCAL,
  }


def _jobs(out_dir: str, num_frames: dict[str, int], seed: int, frames_per_scene: int,
          noise: float, level: int, color_step: float) -> list[tuple]:
  chosen = choose_frames(num_frames, seed, frames_per_scene)
  return [(out_dir, split, s, c, f, seed, noise, level, color_step)
          for split, frames in chosen.items() for s, c, f in frames]


def _run_in_subprocesses(out_dir: str, num_frames: dict[str, int], seed: int,
                         frames_per_scene: int, noise: float, level: int,
                         color_step: float, workers: int) -> list[dict]:
  """Runs shards of the job list as `python -m tfds_hypersim.synthetic` children.

  Fresh interpreters (not fork, not multiprocessing's spawn) so that it is safe
  from a process running JAX threads and needs no `__main__` guard in the caller.
  """
  package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  with tempfile.TemporaryDirectory() as tmp:
    procs = []
    for shard in range(workers):
      cmd = [sys.executable, "-m", "tfds_hypersim.synthetic", "--out", out_dir,
             "--seed", str(seed), "--frames_per_scene", str(frames_per_scene),
             "--noise", repr(noise), "--compression_level", str(level),
             "--color_step", repr(color_step),
             "--shard", str(shard), "--num_shards", str(workers),
             "--records", os.path.join(tmp, f"{shard}.json")]
      for split in DEFAULT_NUM_FRAMES:
        cmd += [f"--{split}", str(int(num_frames.get(split, 0)))]
      procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True))
    errors = []
    for shard, proc in enumerate(procs):
      _, err = proc.communicate()
      if proc.returncode != 0:
        errors.append(f"shard {shard} exited with {proc.returncode}:\n{err[-3000:]}")
    if errors:
      raise RuntimeError("synthetic generation failed:\n" + "\n".join(errors))
    records = []
    for shard in range(workers):
      with open(os.path.join(tmp, f"{shard}.json")) as f:
        records.extend(json.load(f))
  return records


def generate(out_dir: str | os.PathLike, *, num_frames: dict[str, int] | None = None,
             seed: int = 0, frames_per_scene: int = 6, noise: float = 0.0,
             compression_level: int = 1, color_step: float = 0.0,
             workers: int | None = None) -> list[tuple[str, str, int]]:
  """Writes a HyperSim-format manual_dir of procedural frames.

  Args:
    out_dir: root folder; scene folders `ai_VVV_NNN/images/...` go directly in it.
    num_frames: frames per split ('train', 'validation', 'test'); default
      DEFAULT_NUM_FRAMES.
    seed: everything written is a deterministic function of the arguments
      other than `workers`.
    frames_per_scene: frames rendered in each room.
    noise: std of multiplicative Gaussian pixel noise on the radiance (0 = none;
      noise makes the float16 files ~2x larger and slower to compress).
    compression_level: gzip level of the HDF5 datasets (1: ~25% faster to write
      than 4, ~20% larger, as fast to read).
    color_step: if > 0, radiance is rounded to multiples of it (visible banding,
      ~4x smaller files; used for the tiny dummy_data).
    workers: rendering processes; None = min(cpu count, 4) (1 below 16 frames),
      1 = in this process.

  Returns:
    The (scene, camera, frame) triples written, train then validation then test.
  """
  out_dir = os.path.abspath(os.fspath(out_dir))
  os.makedirs(out_dir, exist_ok=True)
  num_frames = dict(DEFAULT_NUM_FRAMES if num_frames is None else num_frames)
  unknown = set(num_frames) - set(DEFAULT_NUM_FRAMES)
  if unknown:
    raise ValueError(f"unknown splits {sorted(unknown)}; use {list(DEFAULT_NUM_FRAMES)}")
  jobs = _jobs(out_dir, num_frames, seed, frames_per_scene, noise, compression_level,
               color_step)
  if workers is None:
    workers = 1 if len(jobs) < 16 else min(os.cpu_count() or 1, 4)
  workers = max(1, min(workers, len(jobs)))
  if workers == 1:
    records = [_make_frame(j) for j in jobs]
  else:
    records = _run_in_subprocesses(out_dir, num_frames, seed, frames_per_scene, noise,
                                   compression_level, color_step, workers)
    rank = {(j[2], j[3], j[4]): i for i, j in enumerate(jobs)}
    records.sort(key=lambda r: rank[(r["scene"], r["camera"], r["frame"])])
  with open(os.path.join(out_dir, MANIFEST), "w") as f:
    json.dump({"seed": seed, "noise": noise, "color_step": color_step,
               "frames": records}, f, indent=1)
  return [(s, c, f) for _, _, s, c, f, *_ in jobs]


def load_manifest(out_dir: str | os.PathLike) -> dict:
  """The generator's sidecar: {'seed', 'noise', 'color_step', 'frames': [...]},
  each frame {'split', 'scene', 'camera', 'frame', 'room_size', 'position',
  'world_from_cam', 'focal_px'}."""
  with open(os.path.join(os.fspath(out_dir), MANIFEST)) as f:
    return json.load(f)


def define_flags(flag_values: flags.FlagValues) -> None:
  """The command's flags (absl, underscore names; the hyphen spellings work too)."""
  flags.DEFINE_string("out", None, "Output manual_dir.", flag_values=flag_values)
  for split, n in DEFAULT_NUM_FRAMES.items():
    flags.DEFINE_integer(split, n, f"{split} frames.", flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Random seed.", flag_values=flag_values)
  flags.DEFINE_integer("frames_per_scene", 6, "Frames per scene.", flag_values=flag_values)
  flags.DEFINE_float("noise", 0.0, "Sensor noise.", flag_values=flag_values)
  flags.DEFINE_integer("compression_level", 1, "gzip level of the HDF5 datasets.",
                       flag_values=flag_values)
  flags.DEFINE_float("color_step", 0.0, "Colour quantisation step.", flag_values=flag_values)
  flags.DEFINE_integer("workers", None, "Worker processes (default: one per core).",
                       flag_values=flag_values)
  # Internal: one shard of the frames, run by generate()'s worker processes.
  flags.DEFINE_integer("shard", None, "(internal) shard to write.", flag_values=flag_values)
  flags.DEFINE_integer("num_shards", 1, "(internal) number of shards.", flag_values=flag_values)
  flags.DEFINE_string("records", None, "(internal) where a shard writes its frame records.",
                      flag_values=flag_values)
  cli.define_hyphen_aliases(flag_values)


def run(args: flags.FlagValues, positional: list[str]) -> int:
  del positional
  if not args.out:
    raise UserError("--out DIR (the manual_dir to write the raw frames to) is required.")
  num_frames = {s: args[s].value for s in DEFAULT_NUM_FRAMES}
  if args.shard is not None:
    jobs = _jobs(os.path.abspath(args.out), num_frames, args.seed, args.frames_per_scene,
                 args.noise, args.compression_level, args.color_step)
    records = [_make_frame(j) for j in jobs[args.shard::args.num_shards]]
    with open(args.records, "w") as f:
      json.dump(records, f)
    return 0
  start = time.perf_counter()
  frames = generate(args.out, num_frames=num_frames, seed=args.seed,
                    frames_per_scene=args.frames_per_scene, noise=args.noise,
                    compression_level=args.compression_level,
                    color_step=args.color_step, workers=args.workers)
  dt = time.perf_counter() - start
  print(f"wrote {len(frames)} frames to {args.out} in {dt:.1f} s "
        f"({dt / max(len(frames), 1):.2f} s/frame)")
  return 0


def main(argv: Iterable[str] | None = None) -> int:
  """The command on `argv` (without the program name; None: sys.argv); the exit status."""
  return cli.run_argv(run, define_flags, None if argv is None else list(argv),
                      usage=__doc__.split("\n")[0], positional=False,
                      prog="python -m tfds_hypersim.synthetic")


if __name__ == "__main__":
  sys.exit(main())
