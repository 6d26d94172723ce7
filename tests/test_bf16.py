"""Mixed precision (`config.model.dtype = "bfloat16"`): bf16 compute, float32
parameters, BatchNorm statistics, head outputs, loss and metrics.

Dtypes of the EfficientNet-b4-shaped models are checked abstractly (`jax.eval_shape`:
no compile); a toy model runs one real train step both ways.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


from smd_jax.models import build_model, efficientnet, layers
from smd_jax.training import data_parallel, steps as steps_lib
from tests.test_no_recompile import tiny_config, toy_encoder  # noqa: F401 (fixture)
from tests.test_paper_configs import batch_of

HEADS = {"depth": {"num_outputs": 1, "activation": "sigmoid"},
         "semantic": {"num_outputs": 40, "activation": "identity"}}


def _dtypes(state):
  return {jnp.dtype(x.dtype) for x in jax.tree.leaves(state)}


def _model(decoder, dtype, monkeypatch):
  # A narrow, shallow EfficientNet (real MBConv blocks, depthwise convs, SE) under
  # the registry's name, so build_model wires decoder, heads and dtype as usual.
  from smd_jax.models import registry
  monkeypatch.setitem(registry.ENCODERS, "tiny_effnet",
                      functools.partial(efficientnet.EfficientNet, 0.25, 0.1))
  return build_model({"encoder": "tiny_effnet", "decoder": decoder, "dtype": dtype,
                      "heads": HEADS, "decoder_channels": (16, 8, 8, 8, 8)
                      if decoder == "unet" else 16}, rngs=nnx.Rngs(0))


def test_bf16_model_keeps_f32_params_stats_and_outputs(monkeypatch):
  for decoder in ("unet", "deeplabv3"):
    model = _model(decoder, "bfloat16", monkeypatch)
    assert _dtypes(nnx.state(model, nnx.Param)) == {jnp.dtype(jnp.float32)}
    assert _dtypes(nnx.state(model, nnx.BatchStat)) == {jnp.dtype(jnp.float32)}
    model.train()
    graph, params, rest = nnx.split(model, nnx.Param, ...)

    def forward(params, rest, x):
      net = nnx.merge(graph, params, rest, copy=True)
      features = net.encoder(x)
      outputs = net(x)
      return features, outputs, nnx.state(net, nnx.BatchStat)

    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    features, outputs, stats = jax.eval_shape(forward, params, rest, x)
    assert {f.dtype for f in features} == {jnp.dtype(jnp.bfloat16)}  # the compute is bf16
    assert {k: v.dtype for k, v in outputs.items()} == {"depth": jnp.float32,
                                                        "semantic": jnp.float32}
    assert outputs["semantic"].shape == (2, 32, 32, 40)
    assert _dtypes(stats) == {jnp.dtype(jnp.float32)}  # updated statistics too


def test_batch_norm_statistics_of_bf16_input_are_f32_and_exact():
  # The statistics are reduced in float32 from the bf16 values: equal to NumPy's
  # float64 statistics of the same (bf16-rounded) numbers.
  bn = layers.batch_norm(4, dtype=jnp.bfloat16)
  x = (jax.random.normal(jax.random.key(0), (2, 8, 8, 4)) * 3 + 1).astype(jnp.bfloat16)
  y = bn(x)
  assert y.dtype == jnp.bfloat16
  xf = np.asarray(x.astype(jnp.float32), np.float64).reshape(-1, 4)
  n = xf.shape[0]
  assert bn.mean[...].dtype == jnp.float32 and bn.var[...].dtype == jnp.float32
  np.testing.assert_allclose(bn.mean[...], 0.1 * xf.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * xf.var(0) * n / (n - 1), rtol=1e-5)
  sd = np.sqrt(xf.var(0) + 1e-5)
  want = (xf - xf.mean(0)) / sd
  # The affine transform runs in float32 and is rounded to bf16 once: u = 2^-8 of the
  # output. The float32 statistics are sums of n = 128 terms (n * u32 relative each,
  # the variance through E[x^2] - E[x]^2, i.e. relative to E[x^2] / var), and the
  # transform x * inv + shift adds a few u32 of its terms |x| / sd and |mean| / sd.
  u, u32 = 2.0**-8, 2.0**-24
  stat_rel = 4 * n * u32 * (np.mean(xf**2, 0) / xf.var(0))
  bound = u * np.abs(want) + (stat_rel + 4 * u32) * (np.abs(xf) + np.abs(xf.mean(0))) / sd
  err = np.abs(np.asarray(y.astype(jnp.float32), np.float64).reshape(-1, 4) - want)
  assert np.all(err <= bound), float((err / bound).max())


def test_bf16_train_step_state_loss_and_metrics_f32(toy_encoder):  # noqa: F811
  mesh = data_parallel.make_mesh(1)  # dtypes do not depend on the mesh; compiles faster
  batch = data_parallel.to_global(batch_of(0, n=8), mesh)
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(dtype, semantic_head=False)  # heads' dtypes: the test above
    model = steps_lib.create_model(config, 0)
    steps, state = steps_lib.build_steps(config, model, total_steps=10, mesh=mesh)
    new_state, metrics = steps.train_step(state, batch)
    assert _dtypes(new_state.params) == {jnp.dtype(jnp.float32)}
    assert _dtypes(new_state.model_state) <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.uint32)}
    assert _dtypes(new_state.opt_state) <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
    floats = {k: v.dtype for k, v in metrics.items() if jnp.issubdtype(v.dtype, jnp.floating)}
    assert set(floats.values()) == {jnp.dtype(jnp.float32)}, floats
    assert not bool(metrics["nonfinite"])
    results[dtype] = jax.device_get(metrics)
  # Same initial weights and batch: bf16 changes the first loss only by rounding. Each
  # conv and each BatchNorm rounds its output to bf16 (u = 2^-8 relative); the errors
  # of the 2 * 16 roundings on the toy UNet's path add like a random walk:
  # sqrt(32) * u ~ 2.2 % relative, on a loss that is a mean over all pixels.
  f32, bf16 = results["float32"], results["bfloat16"]
  np.testing.assert_allclose(bf16["loss_depth"], f32["loss_depth"], rtol=np.sqrt(32) * 2.0**-8)
  assert f32["loss_depth"] != bf16["loss_depth"]  # bf16 really computed something else
