"""Semantic input transforms and task targets against plain NumPy loops."""

import numpy as np
import pytest

from smd_jax import semantics, tasks

PREVALENCE = [1, 2, 22, 9, 38, 5, 3, 40, 7, 6, 13, 8, 35, 20, 4, 14, 39, 18, 11, 12, 10, 23,
              19, 36, 15, 25, 34, 17, 24, 21, 32, 16, 27, 29, 26, 33, 30, 31, 37, 28]


def labels(shape=(2, 5, 7), seed=0):
  return np.random.default_rng(seed).integers(-1, 41, shape).astype(np.int16)


def test_prevalence_order_is_a_permutation_of_nyu40():
  assert list(semantics.PREVALENCE_ORDER) == PREVALENCE
  assert sorted(PREVALENCE) == list(range(1, 41))


@pytest.mark.parametrize("k", [40, 20, 3])
@pytest.mark.parametrize("other", [True, False])
def test_one_hot_by_prevalence(k, other):
  sem = labels()
  out = np.asarray(semantics.one_hot_by_prevalence(sem, k, other_channel=other))
  has_other = other and k < 40
  assert out.shape == sem.shape + (k + has_other,)
  for idx in np.ndindex(sem.shape):
    expected = np.zeros(k + has_other)
    label = sem[idx]
    if label in PREVALENCE[:k]:
      expected[PREVALENCE.index(label)] = 1
    elif label > 0 and has_other:
      expected[k] = 1
    np.testing.assert_array_equal(out[idx], expected, err_msg=f"label {label}")


def test_one_hot_top3_hand_case():
  sem = np.array([[[1, 2, 22, 9, -1]]], np.int16)  # wall, floor, ceiling, window, none
  # The authors' onehot3 (the paper row): window and unlabelled are all-zero vectors.
  out = np.asarray(semantics.SEMANTIC_TRANSFORMS["onehot3"](sem))[0, 0]
  np.testing.assert_array_equal(out, [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
  # Our variant: window goes to the "other" channel.
  out = np.asarray(semantics.SEMANTIC_TRANSFORMS["onehot3_other"](sem))[0, 0]
  np.testing.assert_array_equal(out, [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],
                                      [0, 0, 0, 0]])


def test_raw_labels_hand_case():
  sem = np.array([[[-1, 1, 22, 40]]], np.int16)
  out = np.asarray(semantics.SEMANTIC_TRANSFORMS["labels_raw"](sem))
  assert out.dtype == np.float32 and out.shape == (1, 1, 4, 1)
  np.testing.assert_array_equal(out[0, 0, :, 0], [-1.0, 1.0, 22.0, 40.0])


@pytest.mark.parametrize("name", sorted(semantics.SEMANTIC_TRANSFORMS))
def test_extra_channels_match_the_transforms(name):
  # EXTRA_CHANNELS sizes the encoder's first conv (3 + k): hand-written widths.
  want = {"none": 0, "concat": 1, "onehot40": 40, "onehot20": 20, "onehot3": 3,
          "onehot20_other": 21, "onehot3_other": 4, "contours": 1, "labels_raw": 1}
  out = np.asarray(semantics.SEMANTIC_TRANSFORMS[name](labels()))
  assert out.shape[-1] == want[name] == semantics.EXTRA_CHANNELS[name]


def test_concat_scales_labels_and_zeroes_unlabelled():
  sem = np.array([[[-1, 0, 1, 40]]], np.int16)
  np.testing.assert_allclose(np.asarray(semantics.concat_labels(sem))[0, 0, :, 0],
                             [0, 0, 1 / 40, 1])


def numpy_contours(sem):
  """3x3 max != min over the in-image neighbourhood (OpenCV's default border)."""
  out = np.zeros(sem.shape, np.int32)
  b, h, w = sem.shape
  for n in range(b):
    for i in range(h):
      for j in range(w):
        window = sem[n, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
        out[n, i, j] = window.max() != window.min()
  return out


def test_label_contours_match_loop_on_non_square_maps():
  sem = np.random.default_rng(1).integers(-1, 3, (2, 6, 9)).astype(np.int16)
  np.testing.assert_array_equal(np.asarray(semantics.label_contours(sem)), numpy_contours(sem))


def test_label_contours_of_two_halves_is_a_two_pixel_band():
  sem = np.ones((1, 4, 6), np.int16)
  sem[:, :, 3:] = 5
  expected = np.zeros((1, 4, 6), np.int32)
  expected[:, :, 2:4] = 1  # both sides of the boundary; image borders add nothing
  np.testing.assert_array_equal(np.asarray(semantics.label_contours(sem)), expected)


# torchvision / timm ImageNet statistics, the normalisation every encoder was trained with.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
# float32 (x / 255 - mean) / std: three roundings of values up to |2.7|.
NORMALIZE_ATOL = 3 * 2.0**-24 * 2.7


def test_normalize_image_hand_computed():
  image = np.array([[[[0, 0, 0], [255, 255, 255], [124, 116, 104]]]], np.uint8)
  got = np.asarray(semantics.normalize_image(image))
  assert got.dtype == np.float32 and got.shape == (1, 1, 3, 3)
  want = [[-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],  # black
          [0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225],  # white
          [(124 / 255 - 0.485) / 0.229, (116 / 255 - 0.456) / 0.224,
           (104 / 255 - 0.406) / 0.225]]  # about the mean: about 0
  np.testing.assert_allclose(got[0, 0], want, rtol=0, atol=NORMALIZE_ATOL)
  assert np.abs(got[0, 0, 2]).max() < 0.01


@pytest.mark.parametrize("name", sorted(semantics.SEMANTIC_TRANSFORMS))
def test_extra_channels_match_transform_output(name):
  """model_inputs = [the normalised image | the transform's channels], in that order."""
  image = np.random.default_rng(3).integers(0, 256, (2, 8, 12, 3), dtype=np.uint8)
  sem = np.repeat(np.repeat(labels((2, 2, 3)), 4, axis=1), 4, axis=2)  # 4x4 blocks: contours
  x = np.asarray(semantics.model_inputs({"image": image, "semantic": sem}, name))
  extra = semantics.EXTRA_CHANNELS[name]
  assert x.shape == (2, 8, 12, 3 + extra) and x.dtype == np.float32
  np.testing.assert_allclose(x[..., :3], (image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD,
                             rtol=0, atol=NORMALIZE_ATOL)
  want = np.asarray(semantics.get_transform(name)(sem), np.float32).reshape(2, 8, 12, extra)
  np.testing.assert_array_equal(x[..., 3:], want)
  assert extra == 0 or np.ptp(want) > 0  # random labels: the channels carry them


def test_unknown_transform_names_the_known_ones():
  with pytest.raises(ValueError, match="onehot40"):
    semantics.get_transform("onehot41")


def numpy_sobel5(image):
  """OpenCV ksize=5 Sobel magnitude (BORDER_REFLECT_101), by explicit correlation."""
  smooth, deriv = np.array([1, 4, 6, 4, 1.]), np.array([-1, -2, 0, 2, 1.])
  kx = np.outer(smooth, deriv)
  padded = np.pad(image, 2, mode="reflect")  # numpy's reflect = OpenCV's REFLECT_101
  gx = np.zeros_like(image)
  gy = np.zeros_like(image)
  for i in range(image.shape[0]):
    for j in range(image.shape[1]):
      patch = padded[i:i + 5, j:j + 5]
      gx[i, j] = (patch * kx).sum()
      gy[i, j] = (patch * kx.T).sum()
  return np.sqrt(gx**2 + gy**2)


def test_sobel_magnitude_matches_explicit_correlation():
  image = np.random.default_rng(2).random((6, 9)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(tasks.sobel_magnitude(image[None]))[0],
                             numpy_sobel5(image), rtol=1e-5, atol=1e-5)


def test_depth_edges_of_a_step():
  # A 1 m step between columns 3 and 4: the kernel's one-sided weight is 48, so the
  # response next to the step is 48 > 20 and a 0.3 m step (14.4) is no edge.
  for step, is_edge in ((1.0, True), (0.3, False)):
    depth = np.full((1, 9, 8), 2.0, np.float32)
    depth[:, :, 4:] += step
    depth[0, 0, 0] = np.nan
    target, valid = tasks.DepthEdgeTask(threshold=20.0).targets({"depth": depth})
    target, valid = np.asarray(target), np.asarray(valid)
    assert bool(target[0, 4, 3]) is is_edge and bool(target[0, 4, 4]) is is_edge
    assert not target[0, 4, 0] and not target[0, 4, 7]
    # Every pixel whose 5x5 window holds the NaN is ignored, and only those.
    expected_valid = np.ones((1, 9, 8), bool)
    expected_valid[0, :3, :3] = False
    np.testing.assert_array_equal(valid, expected_valid)


def test_semantic_targets_ignore_unlabelled_and_padding():
  sem = np.array([[[-1, 1, 40]], [[-1, -1, -1]]], np.int16)
  target, valid = tasks.SemanticTask().targets({"semantic": sem})
  np.testing.assert_array_equal(np.asarray(valid), [[[False, True, True]], [[False] * 3]])
  np.testing.assert_array_equal(np.asarray(target)[0, 0, 1:], [0, 39])


def test_contour_targets_skip_padding_examples():
  sem = labels((2, 4, 5))
  target, valid = tasks.ContourTask().targets({"semantic": sem, "mask": np.array([True, False])})
  np.testing.assert_array_equal(np.asarray(target), numpy_contours(sem))
  assert np.asarray(valid)[0].all() and not np.asarray(valid)[1].any()


def test_semantic_targets_in_the_authors_prevalence_order():
  # Their `semantic_encode`: class = rank in the prevalence order (wall 0, floor 1,
  # ceiling (22) 2, window (9) 3, ..., 28 last); unlabelled ignored.
  sem = np.array([[[1, 2, 22, 9, -1, 28]]], np.int16)
  target, valid = tasks.SemanticTask(class_order="prevalence").targets({"semantic": sem})
  np.testing.assert_array_equal(np.asarray(valid)[0, 0], [True] * 4 + [False, True])
  np.testing.assert_array_equal(np.asarray(target)[0, 0, [0, 1, 2, 3, 5]], [0, 1, 2, 3, 39])
  with pytest.raises(ValueError, match="nyu_id"):
    tasks.SemanticTask(class_order="alphabetical")


def numpy_authors_sobel_target(depth, threshold=20.0, max_depth=15.0):
  """The authors' `depth_to_sobel` on clip(depth, 0, 15) / 15 (NaN kept): 5x5 Sobel x
  and y in float64, convertScaleAbs (|.| rounded half to even, saturated to uint8, NaN
  -> 0), bitwise OR, > threshold."""
  image = np.clip(depth.astype(np.float64), 0, max_depth) / max_depth
  smooth, deriv = np.array([1, 4, 6, 4, 1.]), np.array([-1, -2, 0, 2, 1.])
  kx = np.outer(smooth, deriv)
  padded = np.pad(image, 2, mode="reflect")
  out = np.zeros(image.shape, np.int64)
  for i in range(image.shape[0]):
    for j in range(image.shape[1]):
      patch = padded[i:i + 5, j:j + 5]
      gx, gy = (patch * kx).sum(), (patch * kx.T).sum()
      ux, uy = [0 if np.isnan(g) else int(min(np.round(abs(g)), 255)) for g in (gx, gy)]
      out[i, j] = (ux | uy) > threshold
  return out


def test_authors_sobel_target_matches_numpy():
  rng = np.random.default_rng(4)
  depth = rng.uniform(0.5, 4.0, (2, 12, 14)).astype(np.float32)
  depth[:, :, 7:] += 9.0  # a 9 m step: 0.6 normalised, response ~29 > 20
  depth[0, 3:5, 2:4] = 20.0  # clamped to 15 m
  depth[1, 6, 5] = np.nan
  task = tasks.DepthEdgeTask(normalised_depth=True, strength="uint8_or", mask_invalid=False)
  target, valid = task.targets({"depth": depth})
  want = np.stack([numpy_authors_sobel_target(d) for d in depth])
  assert want.any() and not want.all()
  np.testing.assert_array_equal(np.asarray(target), want)
  assert np.asarray(valid).all()  # no ignore mask: every pixel counts
  with pytest.raises(ValueError, match="uint8_or"):
    tasks.DepthEdgeTask(strength="max")
