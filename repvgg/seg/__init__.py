"""Semantic segmentation (paper Sect. 4.3, Table 8): PSPNet heads on dilated RepVGG and ResNet backbones."""
from .models import Segmenter, create_segmenter, list_segmenters, load_segmenter

__all__ = ["Segmenter", "create_segmenter", "list_segmenters", "load_segmenter"]
