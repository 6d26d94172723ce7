"""Depth for plain photos: the library side of `python -m smd_jax.predict`.

Preprocessing. The network is fully convolutional, so a photo is not cropped:
it is resized as a whole (antialiased bilinear, as the data set builder resizes
HyperSim frames; `tfds_hypersim.processing.resize`) so that its short side is
the config's resolution and both sides are multiples of 32 (the network's total
stride), which keeps its aspect ratio to within 32 px on the long side. The
prediction is resized back to the photo's own size (bilinear), so every output
has exactly the input's height and width (after EXIF rotation, i.e. as the photo
is displayed).

Semantic input. A model trained with a semantic input (config.semantic_transform
!= "none") needs a label map per photo: either given (`semantic`: PNG with NYU40
ids 1..40 and 0 = unlabelled, or .npy with -1 or 0 = unlabelled; the photo's
size) or predicted first by a second model with a semantic head (two-stage
inference: `semantic_workdir`, e.g. a 2-head run). Label maps are resized with
nearest neighbour, like the builder's.

Outputs per photo `<stem>`: `<stem>_depth.png` (16-bit, millimetres, clipped at
65.535 m), `<stem>_depth_color.png` (turbo, 0 to the photo's farthest predicted
depth), optionally `<stem>_depth.npy` (float32 metres), and where semantics were
predicted (the model's own semantic head, else the two-stage model)
`<stem>_semantic.png` (NYU40 ids, 0 = unlabelled: the format `semantic` reads)
and `<stem>_semantic_color.png`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

from smd_jax import semantics
from smd_jax.errors import UserError
from smd_jax.evaluation import figures, passes
from smd_jax.inference import trained_run
from tfds_hypersim import processing

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SEMANTIC_EXTENSIONS = (".png", ".npy")
NETWORK_MULTIPLE = 32  # total stride of the encoders: input sides must be multiples of it
MAX_DEPTH_MM = np.iinfo(np.uint16).max
_EXIF_ORIENTATION = 0x0112


def list_inputs(path: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
  """`path` itself if a file, else the files in the folder `path` with these extensions."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise UserError(f"No such file or folder: {path}.")
  found = sorted(os.path.join(path, f) for f in os.listdir(path)
                 if f.lower().endswith(tuple(extensions)) and not f.startswith("."))
  if not found:
    raise UserError(f"No {'/'.join(e[1:].upper() for e in extensions)} file in {path}.")
  return found


def image_size(path: str) -> tuple[int, int]:
  """(height, width) of an image as displayed (EXIF rotation applied), reading the header only."""
  try:
    with Image.open(path) as image:
      w, h = image.size
      if image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):  # rotated by 90 degrees
        w, h = h, w
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise UserError(f"Cannot read image {path}: {_reason(e)}") from e
  return h, w


def _reason(e: Exception) -> str:
  text = str(e).splitlines()[0] if str(e) else type(e).__name__
  return text[:200]


def read_image(path: str) -> np.ndarray:
  """[H,W,3] uint8 RGB of a PNG/JPEG file, EXIF rotation applied (alpha dropped)."""
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)
      return np.asarray(image.convert("RGB"))
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise UserError(f"Cannot read image {path}: {_reason(e)}") from e


def read_semantic(path: str, size: tuple[int, int], image_path: str = "") -> np.ndarray:
  """[H,W] int16 NYU40 ids (-1 unlabelled) from a label map, checked against `size` (H, W).

  PNG: grey values 1..40 are NYU40 ids, 0 is unlabelled. NPY: integers, -1 or 0
  unlabelled. Anything else is an error, as is a map of another size.
  """
  try:
    if path.lower().endswith(".npy"):
      labels = np.load(path, allow_pickle=False)
    else:
      with Image.open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
          raise UserError(
              f"Semantic map {path} is a {image.mode} image; it must hold one channel of "
              "NYU40 ids (grey values 1..40, 0 = unlabelled).")
        labels = np.asarray(image)
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise UserError(f"Cannot read semantic map {path}: {_reason(e)}") from e
  if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
    raise UserError(f"Semantic map {path} must be a 2-D integer label map, not "
                    f"{labels.dtype} of shape {labels.shape}.")
  if tuple(labels.shape) != tuple(size):
    raise UserError(
        f"Semantic map {path} is {labels.shape[0]}x{labels.shape[1]} (HxW) but the image"
        f"{' ' + image_path if image_path else ''} is {size[0]}x{size[1]}.")
  labels = labels.astype(np.int64)
  low = -1 if path.lower().endswith(".npy") else 0
  bad = (labels < low) | (labels > semantics.NUM_NYU40_CLASSES)
  if bad.any():
    raise UserError(
        f"Semantic map {path} has labels outside {low}..{semantics.NUM_NYU40_CLASSES} "
        f"(found {int(labels[bad].min())}..{int(labels[bad].max())}); expected NYU40 ids "
        "1..40 with 0 (or -1 in .npy) = unlabelled.")
  return np.where(labels >= 1, labels, -1).astype(np.int16)


def network_shape(height: int, width: int, resolution: int,
                  multiple: int = NETWORK_MULTIPLE) -> tuple[int, int]:
  """Input size the network sees: short side ~ `resolution`, both sides multiples of `multiple`."""
  short = max(multiple, int(round(resolution / multiple)) * multiple)
  scale = short / min(height, width)
  snap = lambda x: max(multiple, int(round(x * scale / multiple)) * multiple)
  return (short, snap(width)) if height <= width else (snap(height), short)


def prepare_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """uint8 [H,W,3] -> uint8 `shape`, antialiased bilinear on floats (as the builder)."""
  if image.shape[:2] == tuple(shape):
    return image
  return processing.to_uint8(processing.resize(image.astype(np.float32) / 255.0, shape,
                                               "bilinear"))


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  return processing.resize(labels, tuple(shape), "nearest")


def resize_depth(depth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """A prediction back to the photo's size (bilinear; antialiased when shrinking)."""
  if depth.shape == tuple(shape):
    return depth.astype(np.float32)
  return processing.resize(depth.astype(np.float32), tuple(shape), "bilinear")


@dataclasses.dataclass
class Predictor:
  """A restored model and its jitted forward pass (all heads), on batches of one shape."""

  loaded: trained_run.Loaded
  batch_size: int

  def __post_init__(self):
    self.outputs_fn = passes.make_outputs_fn(self.loaded.steps, self.loaded.mesh)
    self.resolution = int(self.loaded.config.data.resolution)
    self.semantic_head = passes.semantic_head(self.loaded.steps.tasks)

  @property
  def takes_semantics(self) -> bool:
    return self.loaded.config.semantic_transform != "none"

  def shape_for(self, size: tuple[int, int]) -> tuple[int, int]:
    return network_shape(size[0], size[1], self.resolution)

  def __call__(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray] | None = None
               ) -> list[dict[str, np.ndarray]]:
    """Predictions at each photo's own size: `depth` (metres) and `semantic` (NYU40 ids).

    All photos of one call must map to the same network shape; `labels` (the
    photos' label maps, their size) are needed when the model takes semantics.
    """
    sizes = [im.shape[:2] for im in images]
    shape = self.shape_for(sizes[0])
    n = len(images)
    batch = {"image": np.zeros((self.batch_size, *shape, 3), np.uint8),
             "semantic": np.full((self.batch_size, *shape), -1, np.int16)}
    for i, image in enumerate(images):
      batch["image"][i] = prepare_image(image, shape)
      if labels is not None:
        batch["semantic"][i] = resize_labels(labels[i], shape)
    out = passes.local_outputs(self.outputs_fn, self.loaded.state, batch, self.loaded.mesh)
    results = []
    for i in range(n):
      r = {"depth": resize_depth(out["depth"][i], sizes[i])}
      if self.semantic_head:
        r["semantic"] = resize_labels(out[self.semantic_head][i].astype(np.int16), sizes[i])
      results.append(r)
    return results


def load_predictor(workdir: str, *, checkpoint: str | int = "latest",
                   batch_size: int | None = None, num_inputs: int | None = None,
                   mesh=None) -> Predictor:
  """Restores `workdir`'s model for prediction.

  The batch (default `config.eval_batch_size`, no larger than the inputs need)
  is rounded up to a multiple of the device count.
  """
  if jax.process_count() > 1:
    raise UserError("Prediction runs in one process (on all its devices).")
  loaded = trained_run.load(workdir, checkpoint=checkpoint, mesh=mesh)
  devices = loaded.mesh.devices.size
  size = int(batch_size or loaded.config.eval_batch_size)
  if num_inputs:
    size = min(size, num_inputs)
  size = max(devices, -(-size // devices) * devices)
  return Predictor(loaded, size)


def write_outputs(out_dir: str, stem: str, prediction: dict[str, np.ndarray], *,
                  write_npy: bool = False) -> list[str]:
  """The files of one photo (see the module docstring); returns their paths."""
  depth = prediction["depth"]
  paths = []
  millimetres = np.clip(np.round(depth * 1000.0), 0, MAX_DEPTH_MM).astype(np.uint16)
  path = os.path.join(out_dir, f"{stem}_depth.png")
  Image.fromarray(millimetres).save(path)
  paths.append(path)
  vmax = max(float(np.max(depth)), 1e-3)
  paths.append(os.path.join(out_dir, f"{stem}_depth_color.png"))
  Image.fromarray(figures.turbo(depth / vmax)).save(paths[-1])
  if write_npy:
    paths.append(os.path.join(out_dir, f"{stem}_depth.npy"))
    np.save(paths[-1], depth.astype(np.float32))
  if "semantic" in prediction:
    labels = prediction["semantic"]
    paths.append(os.path.join(out_dir, f"{stem}_semantic.png"))
    Image.fromarray(np.clip(labels, 0, 255).astype(np.uint8)).save(paths[-1])
    paths.append(os.path.join(out_dir, f"{stem}_semantic_color.png"))
    Image.fromarray(figures.label_colors(labels)).save(paths[-1])
  return paths


def _semantic_paths(images: Sequence[str], semantic: str) -> list[str]:
  """The label map of each image: `semantic` itself for one image, else by file stem."""
  if os.path.isfile(semantic):
    if len(images) > 1:
      raise UserError(f"--semantic {semantic} is one file for {len(images)} images; "
                      "give a folder of label maps named like the images.")
    return [semantic]
  if not os.path.isdir(semantic):
    raise UserError(f"No such semantic map file or folder: {semantic}.")
  by_stem = {}
  for f in sorted(os.listdir(semantic)):
    stem, ext = os.path.splitext(f)
    if ext.lower() in SEMANTIC_EXTENSIONS:
      by_stem.setdefault(stem, os.path.join(semantic, f))
      by_stem.setdefault(stem.removesuffix("_semantic"), os.path.join(semantic, f))
  out = []
  for image in images:
    stem = os.path.splitext(os.path.basename(image))[0]
    if stem not in by_stem:
      raise UserError(f"No semantic map for {image} in {semantic} (expected "
                      f"{stem}.png or {stem}.npy).")
    out.append(by_stem[stem])
  return out


def _stems(paths: Sequence[str]) -> list[str]:
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  seen = {}
  for p, s in zip(paths, stems):
    if s in seen:
      raise UserError(f"{seen[s]} and {p} would write the same output files ({s}_*).")
    seen[s] = p
  return stems


def _batches(order: list[int], keys: list[Any], size: int) -> Iterable[list[int]]:
  """Indices grouped by key (network shape), in chunks of at most `size`."""
  groups: dict[Any, list[int]] = {}
  for i in order:
    groups.setdefault(keys[i], []).append(i)
  for members in groups.values():
    for start in range(0, len(members), size):
      yield members[start:start + size]


def _check_inputs(inputs: str, out_dir: str) -> tuple[list[str], list[str], list[tuple[int, int]]]:
  """(image paths, output stems, (H, W) sizes) of the photos in `inputs`; UserError for an
  unreadable image, two photos with one stem, or an `out_dir` that is a file."""
  images = list_inputs(inputs)
  stems = _stems(images)
  sizes = [image_size(p) for p in images]
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise UserError(f"--out {out_dir} exists and is not a folder.")
  return images, stems, sizes


def _check_semantic_source(predictor: Predictor, workdir: str, semantic: str | None,
                           semantic_workdir: str | None) -> None:
  """UserError unless the label maps come from exactly the source the model needs: none for
  an RGB model, `semantic` or `semantic_workdir` for one that takes semantics."""
  if semantic and semantic_workdir:
    raise UserError("Give --semantic or --semantic_workdir, not both.")
  if (semantic or semantic_workdir) and not predictor.takes_semantics:
    raise UserError(f"The model in {workdir} takes no semantic input (semantic_transform "
                    "'none'); leave out --semantic / --semantic_workdir.")
  if predictor.takes_semantics and not (semantic or semantic_workdir):
    raise UserError(
        f"The model in {workdir} takes a semantic input (semantic_transform "
        f"'{predictor.loaded.config.semantic_transform}'): pass --semantic LABELS (PNG/NPY "
        "NYU40 label maps) or --semantic_workdir RUN (a model with a semantic head, run first).")


def _checked_label_maps(images: Sequence[str], sizes: Sequence[tuple[int, int]],
                        semantic: str) -> list[str]:
  """The label map of each image, each read once up front to check its size and labels."""
  label_paths = _semantic_paths(images, semantic)
  for image, path, size in zip(images, label_paths, sizes):
    read_semantic(path, size, image)
  return label_paths


def _load_first_stage(semantic_workdir: str, checkpoint: str | int, batch_size: int | None,
                      num_inputs: int) -> Predictor:
  """The two-stage setup's first model, which predicts the label maps the second takes:
  UserError unless it is RGB-only and has a semantic head."""
  first_stage = load_predictor(semantic_workdir, checkpoint=checkpoint, batch_size=batch_size,
                               num_inputs=num_inputs)
  if not first_stage.semantic_head:
    raise UserError(f"The model in {semantic_workdir} has no semantic head to predict "
                    "label maps with (e.g. use a 2-head run).")
  if first_stage.takes_semantics:
    raise UserError(f"The model in {semantic_workdir} itself takes a semantic input; "
                    "two-stage inference needs an RGB-only model with a semantic head.")
  return first_stage


def _batch_labels(chunk: Sequence[int], pixels: Sequence[np.ndarray], images: Sequence[str],
                  sizes: Sequence[tuple[int, int]], label_paths: Sequence[str] | None,
                  first_stage: Predictor | None):
  """(label maps [H,W] int16 of the photos in `chunk`, the first stage's predictions): read
  from `label_paths`, else predicted by `first_stage`; (None, None) for an RGB model."""
  if label_paths:
    return [read_semantic(label_paths[i], sizes[i], images[i]) for i in chunk], None
  if first_stage is not None:
    stage_one = first_stage(pixels)
    return [r["semantic"] for r in stage_one], stage_one
  return None, None


def _predict_in_batches(predictor: Predictor, first_stage: Predictor | None,
                        images: Sequence[str], stems: Sequence[str],
                        sizes: Sequence[tuple[int, int]], label_paths: Sequence[str] | None,
                        out_dir: str, *, write_npy: bool, progress: bool
                        ) -> dict[str, list[str]]:
  """Predicts and writes every photo, batched by network shape; {image path: written files}."""
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=len(images), unit="image", desc="predict")
  written = {}
  keys = [predictor.shape_for(s) for s in sizes]
  if first_stage is not None:  # both models' shapes must agree within a batch
    keys = [(k, first_stage.shape_for(s)) for k, s in zip(keys, sizes)]
  size = min(predictor.batch_size, first_stage.batch_size if first_stage else predictor.batch_size)
  for chunk in _batches(list(range(len(images))), keys, size):
    pixels = [read_image(images[i]) for i in chunk]
    labels, stage_one = _batch_labels(chunk, pixels, images, sizes, label_paths, first_stage)
    results = predictor(pixels, labels)
    for j, i in enumerate(chunk):
      if "semantic" not in results[j] and stage_one is not None:
        results[j]["semantic"] = stage_one[j]["semantic"]
      written[images[i]] = write_outputs(out_dir, stems[i], results[j], write_npy=write_npy)
    if bar is not None:
      bar.update(len(chunk))
  if bar is not None:
    bar.close()
  return written


def predict_files(workdir: str, inputs: str, out_dir: str, *, checkpoint: str | int = "latest",
                  semantic: str | None = None, semantic_workdir: str | None = None,
                  semantic_checkpoint: str | int = "latest", batch_size: int | None = None,
                  write_npy: bool = False, progress: bool = False) -> dict[str, list[str]]:
  """Predicts depth for a photo or a folder of photos; returns {input path: written files}.

  Every input is checked (readable image, label map present, right size and
  range) before anything is predicted or written.
  """
  images, stems, sizes = _check_inputs(inputs, out_dir)
  predictor = load_predictor(workdir, checkpoint=checkpoint, batch_size=batch_size,
                             num_inputs=len(images))
  _check_semantic_source(predictor, workdir, semantic, semantic_workdir)
  label_paths = _checked_label_maps(images, sizes, semantic) if semantic else None
  first_stage = None
  if semantic_workdir:
    first_stage = _load_first_stage(semantic_workdir, semantic_checkpoint, batch_size,
                                    len(images))
  os.makedirs(out_dir, exist_ok=True)
  written = _predict_in_batches(predictor, first_stage, images, stems, sizes, label_paths,
                                out_dir, write_npy=write_npy, progress=progress)
  logging.info("Wrote depth for %d image(s) to %s.", len(images), out_dir)
  return written
