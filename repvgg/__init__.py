"""repvgg: train a multi-branch RepVGG, deploy it as a plain stack of 3x3 conv + ReLU.

Public API: create_model, list_models, list_blocks, reparameterize, load_checkpoint,
save_checkpoint, optimize_for_inference; segmentation: create_segmenter, list_segmenters.
"""
from .blocks import BLOCKS, NotConvertibleError, RepVGGBlock
from .checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from .rebuild import model_from_checkpoint
from .factory import create_model, list_models
from .model import RepVGG, RepVGGFeatures
from .optimize import optimize_for_inference
from .reparam import reparameterize
from .repvggify import repvggify
from .seg import create_segmenter, list_segmenters, load_segmenter

__version__ = "0.1.0"


def list_blocks() -> dict[str, str]:
    """Block variants selectable with ``create_model(name, block=...)``, with a one-line description."""
    from . import reorg  # a whole-network variant, so it is not in BLOCKS

    return {**{name: spec.description for name, spec in BLOCKS.items()}, "residual_reorg": reorg.DESCRIPTION}


__all__ = [
    "create_model", "list_models", "create_segmenter", "list_segmenters", "load_segmenter", "repvggify", "optimize_for_inference", "list_blocks", "reparameterize", "NotConvertibleError",
    "RepVGG", "RepVGGBlock", "RepVGGFeatures",
    "load_checkpoint", "save_checkpoint", "model_from_checkpoint", "read_metadata", "CheckpointError",
]
