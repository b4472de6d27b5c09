"""First-stage networks: encoder/decoder, Gaussian posterior and vector quantiser (LDM Sec. 3.1)."""
from .blocks import AttnBlock, Downsample, ResnetBlock, Upsample, make_attn, normalize
from .distributions import DiagonalGaussianDistribution
from .model import Decoder, Encoder
from .quantize import QuantizerInfo, VectorQuantizer

__all__ = [
    "AttnBlock", "Decoder", "DiagonalGaussianDistribution", "Downsample", "Encoder", "QuantizerInfo",
    "ResnetBlock", "Upsample", "VectorQuantizer", "make_attn", "normalize",
]
