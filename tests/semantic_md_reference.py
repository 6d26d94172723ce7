"""PyTorch stand-ins for the model classes of the paper authors' code, for tests.

Written from the class structure of github charyyev/semantic_md @3278e81
(`source/models/__init__.py`, `source/models/specialized_networks/`, `source/models/
{multi_loss,triple_loss,sobel,contour}_model.py`, `model_utils.py`) as docs/results.md
describes it: the same attribute names (so the same state-dict keys), the same smp
0.3.3 / torchvision parts, the same forward. Two knobs keep the tests fast: the timm
encoder name (their `tu-efficientnet_b4`) and the decoder widths (theirs: UNet
(256, 128, 64, 32, 16), DeepLabV3 256). `make_tiny_timm_encoder` registers a timm
EfficientNet at width 0.25 / depth 0.1, the architecture of our ``tiny_efficientnet``.

Every class's ``forward`` returns ``{our task name: raw output}`` (NCHW).
"""

from __future__ import annotations

TINY_TIMM = "tiny_effnet_semantic_md_test"
TINY_OURS = "tiny_efficientnet"
UNET_CHANNELS = (16, 8, 8, 8, 8)
DEEPLAB_CHANNELS = 16


def make_tiny_timm_encoder(timm) -> str:
  """Registers (once) the timm model `TINY_TIMM`; returns its smp name ``tu-...``."""
  if TINY_TIMM not in timm.list_models(TINY_TIMM):
    from timm.models import register_model  # pylint: disable=g-import-not-at-top
    from timm.models.efficientnet import _gen_efficientnet  # pylint: disable=g-import-not-at-top

    def tiny(pretrained=False, **kwargs):
      return _gen_efficientnet(TINY_TIMM, channel_multiplier=0.25, depth_multiplier=0.1,
                               pretrained=pretrained, **kwargs)

    tiny.__name__ = TINY_TIMM
    register_model(tiny)
  return "tu-" + TINY_TIMM


def build(torch, smp, kind: str, encoder: str, *, extra: int = 0):
  """A reference model of ``kind`` (see `KINDS`) with random weights."""
  nn = torch.nn
  from segmentation_models_pytorch.base import SegmentationHead  # pylint: disable=g-import-not-at-top
  from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3Decoder  # pylint: disable=g-import-not-at-top
  from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder  # pylint: disable=g-import-not-at-top

  def smp_model(decoder):
    # Their ModelFactory.basic_models: smp model, 1 class, sigmoid.
    if decoder == "unet":
      return smp.Unet(encoder, encoder_weights=None, activation="sigmoid", in_channels=3,
                      classes=1, decoder_channels=UNET_CHANNELS)
    return smp.DeepLabV3(encoder, encoder_weights=None, activation="sigmoid", classes=1,
                         decoder_channels=DEEPLAB_CHANNELS)

  def widen(model, k):
    # Their extend_first_convolution: a fresh conv with 3 + k inputs (PyTorch default
    # init), RGB filters copied in, set back in place (timm stems have no bias).
    old = model.encoder.model.conv_stem
    new = nn.Conv2d(old.in_channels + k, old.out_channels, old.kernel_size, old.stride,
                    old.padding, bias=old.bias is not None)
    with torch.no_grad():
      new.weight[:, :old.in_channels] = old.weight
    model.encoder.model.conv_stem = new
    return model

  class InputVariant(nn.Module):
    """ConcatModel / SimplifiedOneHotModel / ContourModel (input): ``self.model``."""

    def __init__(self, decoder, k):
      super().__init__()
      self.model = widen(smp_model(decoder), k)

    def forward(self, x):
      return {"depth": self.model(x)}

  class SemanticConvolutionModel(nn.Module):
    """``pretrained_model`` and ``model`` (the same widened smp model) + ``convolution``."""

    def __init__(self):
      super().__init__()
      from torchvision.models.efficientnet import MBConv, MBConvConfig  # pylint: disable=g-import-not-at-top
      self.pretrained_model = smp_model("unet")
      self.model = widen(self.pretrained_model, 3)
      config = MBConvConfig(expand_ratio=6, kernel=3, stride=1, input_channels=1,
                            out_channels=3, num_layers=1, width_mult=1.4, depth_mult=1.8)
      self.convolution = nn.Sequential(
          nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8),
          MBConv(config, 0.2, nn.BatchNorm2d),
          nn.Conv2d(8, 3, 1, bias=False), nn.BatchNorm2d(3), nn.Sigmoid())

    def forward(self, x):  # x: normalised RGB + the raw label map (4 channels)
      image, semantic = x[:, :3], x[:, 3:]
      return {"depth": self.model(torch.cat([image, self.convolution(semantic)], 1))}

  class MultiTask(nn.Module):
    """MultiLossModel / TripleLossModel / SobelLossModel / ContourModel (contour_loss):
    ``encoder``, ``decoder_<t>``, ``head_<t>`` (3x3, no activation) [+ unused ``test``]."""

    def __init__(self, decoder, tasks, with_test):
      super().__init__()
      if with_test:
        self.test = smp.Unet(encoder, encoder_weights=None, decoder_channels=UNET_CHANNELS)
      kwargs = {"output_stride": 8} if decoder == "deeplabv3" else {}
      self.encoder = smp.encoders.get_encoder(encoder, in_channels=3, depth=5, weights=None,
                                              **kwargs)
      self.tasks = dict(tasks)
      for task, classes in self.tasks.items():
        if decoder == "unet":
          dec = UnetDecoder(self.encoder.out_channels, UNET_CHANNELS, n_blocks=5,
                            use_batchnorm=True, center=False, attention_type=None)
          head = SegmentationHead(UNET_CHANNELS[-1], classes, kernel_size=3, activation=None,
                                  upsampling=1)
        else:
          dec = DeepLabV3Decoder(self.encoder.out_channels[-1], DEEPLAB_CHANNELS, (12, 24, 36))
          head = SegmentationHead(DEEPLAB_CHANNELS, classes, kernel_size=3, activation=None,
                                  upsampling=8)
        setattr(self, f"decoder_{task}", dec)
        setattr(self, f"head_{task}", head)

    def forward(self, x):
      features = self.encoder(x)
      ours = {"sobel": "depth_edges"}
      return {ours.get(t, t): getattr(self, f"head_{t}")(getattr(self, f"decoder_{t}")(*features))
              for t in self.tasks}

  class SingleTask(nn.Module):
    """Their smp models as saved unwrapped (``uefficientnet_b4``, ``deeplab_b4``)."""

    def __init__(self, decoder):
      super().__init__()
      self.inner = smp_model(decoder)

    def forward(self, x):
      return {"depth": self.inner(x)}

    def state_dict(self, *args, **kwargs):  # the smp model's own keys, no prefix
      return self.inner.state_dict(*args, **kwargs)

  builders = {
      "smp_unet": lambda: SingleTask("unet"),
      "smp_deeplab": lambda: SingleTask("deeplabv3"),
      "input_unet": lambda: InputVariant("unet", extra),
      "input_deeplab": lambda: InputVariant("deeplabv3", extra),
      "semantic_convolution": SemanticConvolutionModel,
      "multi_loss_unet": lambda: MultiTask("unet", {"depth": 1, "semantic": 40}, False),
      "multi_loss_deeplab": lambda: MultiTask("deeplabv3", {"depth": 1, "semantic": 40}, False),
      "triple_loss": lambda: MultiTask("unet", {"depth": 1, "semantic": 40, "contours": 2},
                                       True),
      "sobel_loss": lambda: MultiTask("unet", {"depth": 1, "sobel": 2}, True),
      "contour_loss": lambda: MultiTask("unet", {"depth": 1, "contours": 2}, True),
  }
  return builders[kind]()


KINDS = ("smp_unet", "smp_deeplab", "input_unet", "input_deeplab", "semantic_convolution",
         "multi_loss_unet", "multi_loss_deeplab", "triple_loss", "sobel_loss", "contour_loss")
