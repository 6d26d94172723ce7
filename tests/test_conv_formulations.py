"""Per-backend convolution formulations (smd_jax/models/layers.py): which one is chosen,
and each equal to XLA's plain convolution, forward and gradients, f32 and bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smd_jax.models import layers

DN = ('NHWC', 'HWIO', 'NHWC')


def plain_conv(x, w, strides, padding, dilation=(1, 1), groups=1):
  return jax.lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                      dimension_numbers=DN, feature_group_count=groups,
                                      precision=jax.lax.Precision.HIGHEST)


def _data(shape_x, shape_w, dtype, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=shape_x), dtype),
          jnp.asarray(rng.normal(size=shape_w), dtype))


def test_formulation_is_chosen_per_backend():
  nhwc = jax.lax.conv_dimension_numbers((2, 8, 8, 16), (1, 1, 16, 32), DN)
  kw = dict(dimension_numbers=nhwc)
  pick = layers.conv_formulation
  assert pick((2, 8, 8, 16), (1, 1, 16, 32), ((0, 0), (0, 0)), backend='cpu', **kw) == 'dot'
  assert pick((2, 8, 8, 16), (3, 3, 1, 16), ((1, 1), (1, 1)), feature_group_count=16,
              backend='cpu', **kw) == 'taps'
  assert pick((2, 8, 8, 16), (3, 3, 16, 32), ((1, 1), (1, 1)), backend='cpu', **kw) == 'native'
  for backend in ('gpu', 'tpu'):
    assert pick((2, 8, 8, 16), (1, 1, 16, 32), ((0, 0), (0, 0)), backend=backend,
                **kw) == 'native'
    assert pick((2, 8, 8, 16), (3, 3, 1, 16), ((1, 1), (1, 1)), feature_group_count=16,
                backend=backend, **kw) == 'native'
  # Cases the alternatives do not cover stay native on the CPU too.
  assert pick((2, 8, 8, 16), (1, 1, 16, 32), ((1, 1), (1, 1)), backend='cpu', **kw) == 'native'
  assert pick((2, 8, 8, 16), (1, 1, 16, 32), 'SAME', backend='cpu', **kw) == 'native'
  assert pick((2, 8, 8, 16), (1, 1, 16, 32), ((0, 0), (0, 0)), backend='cpu',
              preferred_element_type=jnp.float32, **kw) == 'native'
  nchw = jax.lax.conv_dimension_numbers((2, 16, 8, 8), (32, 16, 1, 1), ('NCHW', 'OIHW', 'NCHW'))
  assert pick((2, 16, 8, 8), (32, 16, 1, 1), ((0, 0), (0, 0)), dimension_numbers=nchw,
              backend='cpu') == 'native'


@pytest.mark.parametrize('dtype,tol', [(jnp.float32, 1e-4), (jnp.bfloat16, 0.1)])
@pytest.mark.parametrize('stride', [1, 2])
def test_pointwise_dot_equals_plain_conv_with_gradients(dtype, tol, stride):
  x, w = _data((2, 7, 6, 24), (1, 1, 24, 40), dtype)
  pad = ((0, 0), (0, 0))
  got = layers.pointwise_conv_dot(x, w, (stride, stride))
  want = plain_conv(x, w, (stride, stride), pad)
  assert got.dtype == want.dtype == dtype and got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             atol=tol, rtol=tol)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w).astype(jnp.float32)))
  grads = jax.grad(loss(lambda x, w: layers.pointwise_conv_dot(x, w, (stride, stride))),
                   argnums=(0, 1))(x, w)
  want_grads = jax.grad(loss(lambda x, w: plain_conv(x, w, (stride, stride), pad)),
                        argnums=(0, 1))(x, w)
  for g, h in zip(grads, want_grads):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(h, np.float32),
                               atol=tol * 10, rtol=tol)


def test_nnx_convs_use_the_cpu_formulations_and_match_plain():
  if jax.default_backend() != 'cpu':
    pytest.skip('the alternative formulations are CPU-only')
  x, _ = _data((2, 8, 8, 16), (1,), jnp.float32)
  cases = [(layers.conv2d(16, 32, 1, rngs=nnx.Rngs(0)), 'dot_general', 1),
           (layers.conv2d(16, 16, 3, 2, groups=16, rngs=nnx.Rngs(0)), 'mul', 16),
           (layers.conv2d(16, 8, 3, rngs=nnx.Rngs(0)), 'conv_general_dilated', 1)]
  for conv, primitive, groups in cases:
    names = {e.primitive.name for e in jax.make_jaxpr(conv)(x).eqns}
    assert primitive in names, names
    assert ('conv_general_dilated' in names) == (primitive == 'conv_general_dilated')
    k = conv.kernel.shape[0]
    s = conv.strides[0]
    pad = layers.torch_padding(k, s)
    want = plain_conv(x, conv.kernel[...], (s, s), ((pad, pad), (pad, pad)), groups=groups)
    np.testing.assert_allclose(conv(x), want, atol=1e-4, rtol=1e-4)
