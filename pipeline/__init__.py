"""The image-to-3D pipeline: multiview -> mesh -> texture -> export -> upload."""

__version__ = "0.1.0"
