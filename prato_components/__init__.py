"""PrATo bundles: prompt-based dynamic token pruning for ViT segmentation, for MONAI bundles."""

__version__ = "0.4.2"
