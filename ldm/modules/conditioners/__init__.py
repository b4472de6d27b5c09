"""Conditioners: registry by name and the built-in conditioners (see docs/unet-and-conditioning.md)."""
from ldm.modules.conditioners.base import OUTPUT_KEYS, Conditioner
from ldm.modules.conditioners.class_label import ClassEmbedder
from ldm.modules.conditioners.clip import FrozenCLIPEmbedder
from ldm.modules.conditioners.open_clip import FrozenOpenCLIPEmbedder
from ldm.modules.conditioners.registry import (
           build_conditioner,
           get_conditioner,
           list_conditioners,
           register_conditioner,
)
from ldm.modules.conditioners.spatial import SpatialRescaler
from ldm.modules.conditioners.stack import ConditionerStack
from ldm.modules.conditioners.text_transformer import BERTEmbedder, TransformerEmbedder

__all__ = ["OUTPUT_KEYS", "Conditioner", "ConditionerStack", "ClassEmbedder", "TransformerEmbedder", "BERTEmbedder",
           "FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder", "SpatialRescaler", "register_conditioner", "get_conditioner",
           "build_conditioner", "list_conditioners"]
