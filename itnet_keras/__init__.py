"""ItNet: iterative neural networks for anytime semantic segmentation, in Keras 3.

`import itnet_keras` loads the model (and registers its layers for `keras.models.load_model`)
at once when Keras is already loaded, else on the first use of a name below: a command's
`--help` then answers before TensorFlow is imported (`python -m itnet_keras.fit --help`).
"""

import importlib
import sys

_EXPORTS = {"PRESETS": "itnet_keras.presets", "anytime": "itnet_keras.model", "build_itnet": "itnet_keras.model",
            "encode": "itnet_keras.model", "finish": "itnet_keras.model", "step": "itnet_keras.model"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'itnet_keras' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


if "keras" in sys.modules:
    importlib.import_module("itnet_keras.model")
