"""seguncert: semantic segmentation and depth that say how far to trust each pixel."""

__version__ = "0.1.0"
