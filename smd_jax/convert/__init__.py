"""PyTorch weights (timm, torchvision, smp, semantic_md) -> our Flax models.

Command line (writes an Orbax checkpoint that ``config.init_from`` loads)::

    python -m smd_jax.convert --from timm --arch efficientnet_b4 model.safetensors --out DIR
    python -m smd_jax.convert --from semantic_md weights.pth --out DIR
    python -m smd_jax.convert --from timm timm/efficientnet_b4.ra2_in1k   # Hub -> cache

Library::

    from smd_jax import convert
    state_dict = convert.read_state_dict('model.safetensors')   # numpy, no torch needed
    encoder, report, arch = convert.convert_encoder(state_dict, 'efficientnet_b4')
    model, report, model_config = convert.convert_model(state_dict, source='smp')
    convert.load_pretrained(model, 'DIR')                        # what init_from does
    convert.hub.fetch('timm/efficientnet_b4.ra2_in1k').directory  # Hub id -> cached DIR

Modules: `names` (state-dict names -> our paths per source), `core` (layout
transforms, checks, writes), `io` (reading .safetensors / .pth, the converted
checkpoint format), `converters` (per source; model inference; init_from),
`hub` (Hugging Face Hub ids: download, convert, cache; the authors' default weights),
`reference` and `fidelity` (the optional PyTorch reference and the numerical
comparison against it; need the torch extra).
"""

import importlib

# Each public name -> the submodule that defines it. They are imported on first use
# (PEP 562 `__getattr__`), not with the package, so that `python -m smd_jax.convert`
# re-executes itself with glibc's tunables (smd_jax/huge_pages.py) before jax, flax and
# the models are imported, as the other commands do.
_SOURCES = {
    "converters": ("ENCODER_SOURCES", "MODEL_SOURCES", "SOURCES", "convert_encoder",
                   "convert_model", "fetch_init_from", "infer_arch", "infer_model_config",
                   "load_pretrained", "maybe_init_from", "name_map"),
    "core": ("AssignReport", "ConversionError", "Converted", "assign", "convert_state_dict",
             "load_state_dict", "stem_path"),
    "io": ("load_converted", "read_state_dict", "save_converted"),
    "names": ("SEMANTIC_MD_TASKS",),
}
_DEFINED_IN = {name: module for module, names in _SOURCES.items() for name in names}


def __getattr__(name: str):
  if name == "hub" or name in _SOURCES:  # a submodule, as `convert.core` always was
    return importlib.import_module(f"{__name__}.{name}")
  if name not in _DEFINED_IN:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_DEFINED_IN[name]}"), name)
  globals()[name] = value  # later lookups skip this function
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))


__all__ = [
    "AssignReport", "ConversionError", "Converted", "ENCODER_SOURCES", "MODEL_SOURCES",
    "SEMANTIC_MD_TASKS", "SOURCES", "assign", "convert_encoder", "convert_model",
    "convert_state_dict", "fetch_init_from", "hub", "infer_arch", "infer_model_config", "load_converted",
    "load_pretrained", "load_state_dict", "maybe_init_from", "name_map", "read_state_dict",
    "save_converted", "stem_path",
]
