"""The paper's training setup (Semantic-MD, Sec. 4): every experiment starts here.

EfficientNet-b4 UNet, L1 depth loss, Adam at 1e-3 with cosine decay to 1e-6 over
15 epochs, batch 32, 256x256 crops, depth clamped to 15 m and divided by 15.
Other configs import this one and change a few fields. Every field has its rule (type,
range, registry) in smd_jax/config_rules.py FIELDS, which every command checks before it
starts (smd_jax/validation.py); a new field gets its entry there too.
"""

from __future__ import annotations

from ml_collections import config_dict


def get_config() -> config_dict.ConfigDict:
  config = config_dict.ConfigDict()
  config.seed = 0

  config.data = config_dict.ConfigDict(dict(
      name="hypersim",
      data_dir=config_dict.placeholder(str),  # TFDS data_dir; default ~/tensorflow_datasets
      manual_dir=config_dict.placeholder(str),  # raw HyperSim scene folders
      resolution=256,
      split_scheme="semantic_md",  # or "official" (HyperSim v1 split); docs/data.md
      depth_type="distance",  # HyperSim's depth_meters (paper); "planar" = z-depth
      num_threads=8,  # grain reader threads per process (per worker when num_workers > 0)
      # Worker processes that read and decode batches (0: threads in the training
      # process). Per-example Python holds the GIL, so threads stop scaling near
      # one core; on a many-core host use workers. Same batches, same order and
      # checkpoints for any value.
      num_workers=0,
      prefetch_batches=2,
      # Procedural HyperSim-format frames written to <workdir>/data (no download).
      synthetic=dict(enabled=False, seed=0, num_frames=dict(train=0, validation=0, test=0)),
  ))

  config.model = config_dict.ConfigDict(dict(
      encoder="efficientnet_b4",
      decoder="unet",
      dtype="float32",  # compute dtype; "bfloat16" for mixed precision (params stay f32)
      heads=dict(depth=dict(num_outputs=1, activation="sigmoid")),
      # A learned block between the semantic channels and the encoder
      # (smd_jax/models/registry.py INPUT_BLOCKS, e.g. "semantic_conv"); None = none.
      input_block=config_dict.placeholder(str),
      # Head conv size; None = the decoder's (UNet 3, smp's DeepLabV3 1).
      head_kernel_size=config_dict.placeholder(int),
      # Init of the stem's input channels beyond RGB (smd_jax/models/model.py
      # STEM_INITS): "encoder" (its own init) or "torch_uniform" (the authors').
      stem_init="encoder",
      # Init of the decoders and heads (smd_jax/models/model.py BRANCH_INITS): "smp" or
      # "torch" (PyTorch's default, the authors' multi-task models).
      branch_init="smp",
  ))
  # Weights to start from, loaded only when the workdir has no checkpoint yet:
  # "imagenet" = the ImageNet weights the authors used for model.encoder (timm 0.9.2's
  # default tag on the Hugging Face Hub, smd_jax/convert/hub.py DEFAULT_WEIGHTS: the
  # paper's setting; downloaded and converted once, then cached), a Hub id
  # org/name[@revision], or a directory written by `python -m smd_jax.convert`.
  # "" or None (--config.init_from=): the models' own random init.
  config.init_from = "imagenet"
  # Name of the semantic input transform (smd_jax/semantics.py); "none" = RGB only.
  config.semantic_transform = "none"
  # Per task: kind (smd_jax/tasks.py TASKS; default: the task's name), loss name and
  # optional loss_params (smd_jax/losses.py), weight in L = sum_t w_t L_t, task params.
  config.tasks = config_dict.ConfigDict(dict(
      depth=dict(loss="l1", weight=1.0, params=dict(max_depth=15.0)),
  ))
  # Key of the paper's published row to compare with (smd_jax/paper.py), if any.
  config.paper_row = config_dict.placeholder(str)

  config.optimizer = config_dict.ConfigDict(dict(
      name="adam", learning_rate=1e-3, end_learning_rate=1e-6, warmup_steps=0,
      # "epoch": the cosine's rate changes once per epoch, as the authors' trainer steps
      # CosineAnnealingLR; "step": every step (smd_jax/training/steps.py SCHEDULE_UNITS).
      schedule_unit="epoch",
      b1=0.9, b2=0.999, eps=1e-8,  # Adam
      momentum=config_dict.placeholder(float),  # SGD
  ))
  config.batch_size = 32  # global, over all devices and hosts
  config.eval_batch_size = 32
  config.num_epochs = 15
  config.num_train_steps = -1  # > 0 overrides num_epochs

  config.log_every_steps = 50
  config.eval_every_steps = -1  # -1: evaluate at the end only
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  # Steps with a non-finite loss or gradient skip their update; this many in a row stop the run.
  config.max_nonfinite_steps = 5
  config.max_eval_examples = config_dict.placeholder(int)  # None: the whole split
  config.num_images = 4  # validation examples drawn as PNG panels
  return config


# The paper's auxiliary-loss weight: lambda_sem = 0.07 for every auxiliary task (Sec. 4.1);
# contours get 0.1, as in the authors' code (configs/base.yaml @3278e81; docs/method.md).
SEMANTIC_WEIGHT = 0.07
CONTOUR_WEIGHT = 0.1


def add_task(config, name: str, *, num_outputs: int, loss: str, weight: float,
             kind: str | None = None, **params) -> None:
  """Adds a head (decoder + per-pixel logits) and its loss to a multi-task config."""
  config.model.heads[name] = dict(num_outputs=num_outputs, activation="identity")
  task = dict(kind=kind or name, loss=loss, weight=weight)
  if params:
    task["params"] = params
  config.tasks[name] = task


def add_semantic_head(config, loss: str = "ce") -> None:
  """The 2-head model: + NYU40 semantic segmentation."""
  add_task(config, "semantic", num_outputs=40, loss=loss, weight=SEMANTIC_WEIGHT)


def add_contour_head(config) -> None:
  """The 3-head model's third task: 2-class semantic contours."""
  add_task(config, "contours", num_outputs=2, loss="ce", weight=CONTOUR_WEIGHT)


def use_deeplab(config) -> None:
  """DeepLabV3 (ASPP, encoder output stride 8) in place of the UNet decoder."""
  config.model.decoder = "deeplabv3"


# ---------------------------------------------------------------------------------
# The authors' models and losses (github charyyev/semantic_md @3278e81), which the
# configs/paper rows build; docs/results.md "Paper rows against the authors' code".
# Our own choices where they differ are the configs/paper/variants/ configs.

# Their semantic-loss settings by loss name (`loss_functions.py`, trainers,
# `configs/base.yaml`): CE = sum over labelled pixels / all pixels; Dice and Focal
# Tversky on sigmoid probabilities with unlabelled pixels' predictions counted;
# Tversky alpha 0.8 on FN, 1 - alpha on FP; combinations 0.5 CE + 0.5 other
# (`weight_lambda` 0.5). Their Dice/Tversky target transposes H and W (a defect we
# do not repeat).
AUTHORS_SEMANTIC_LOSS_PARAMS = {
    "ce": dict(normalize="all_pixels"),
    "dice": dict(activation="sigmoid", unlabelled="count"),
    "dice_ce": dict(activation="sigmoid", unlabelled="count", normalize="all_pixels",
                    ce_weight=0.5, other_weight=0.5),
    "focal_tversky_ce": dict(activation="sigmoid", unlabelled="count", alpha=0.8, beta=0.2,
                             normalize="all_pixels", ce_weight=0.5, other_weight=0.5),
}
# Their Sobel head's target (`depth_to_sobel`, `SobelTrainer`): OR of the uint8 |Sx|,
# |Sy| of the normalised depth > 20, every pixel counted, weight lambda_sobel = 1.
AUTHORS_SOBEL = dict(threshold=20.0, normalised_depth=True, strength="uint8_or",
                     mask_invalid=False)
AUTHORS_SOBEL_WEIGHT = 1.0


def authors_heads(config) -> None:
  """Their multi-task heads (`MultiLossModel`, `TripleLossModel`, `SobelLossModel`):
  SegmentationHead(kernel_size=3, activation=None) for every task, so the depth head
  is linear (no sigmoid), and DeepLabV3's heads are 3x3 (x8 upsampling as smp's); bare
  smp decoders and heads that keep PyTorch's default init (no smp `initialize()`)."""
  config.model.heads.depth.activation = "identity"
  config.model.head_kernel_size = 3
  config.model.branch_init = "torch"


def add_authors_semantic_head(config, loss: str = "ce") -> None:
  """`add_semantic_head` with their loss settings and class order (class = rank in the
  prevalence order, so converted checkpoints' semantic heads score right)."""
  add_semantic_head(config, loss)
  config.tasks.semantic.loss_params = dict(AUTHORS_SEMANTIC_LOSS_PARAMS[loss])
  config.tasks.semantic.params = dict(class_order="prevalence")


def authors_semantic_input(config, transform: str) -> None:
  """A semantic input as their input-variant wrappers build it: ``transform`` channels
  after RGB, the stem's new input channels with PyTorch's default conv init."""
  config.semantic_transform = transform
  config.model.stem_init = "torch_uniform"
