"""ItNet: iterative neural networks for anytime semantic segmentation, in Keras 3."""

from itnet_keras.model import anytime, build_itnet, encode, finish, step
from itnet_keras.presets import PRESETS

__all__ = ["PRESETS", "anytime", "build_itnet", "encode", "finish", "step"]
