"""Model arguments: their defaults, the paper's named networks, and their validation.

A preset is a plain dict of `build_itnet` keyword arguments (JSON-safe). The
dataset a preset was made for fixes its default input size and class count.
"""

import math
import typing


class ModelArg(typing.NamedTuple):
    """One `build_itnet` keyword argument: its name, default, type and help. With `flag`,
    `fit` has a command-line flag for it (`--width`, ...) that overrides the preset."""
    name: str
    default: object
    type: type
    help: str
    choices: tuple = None
    flag: bool = True


BN_PLACEMENTS = ("between", "every_conv")

# Every model argument, once: `DEFAULTS`, `FitConfig`'s model fields and their flags, and
# the check of `IterativeBlock`'s signature (tests/test_model.py) are made from this list.
MODEL_ARGS = (
    ModelArg("num_classes", 11, int, "classes", flag=False),
    ModelArg("width", 51, int, "channels of each scale of the state, the paper's f"),
    ModelArg("num_scales", 3, int, "scales, the paper's L"),
    ModelArg("num_iterations", 16, int, "iterations of the block (outputs), the paper's N"),
    ModelArg("num_blocks", 1, int, "bottleneck residual blocks per iteration, the paper's K"),
    ModelArg("expansion", 6, int, "bottleneck expansion factor, the paper's t"),
    ModelArg("weight_sharing", True, bool, "share the iterative block's weights"),
    # "between" iterations (Sec. 2.5) or after "every_conv"
    ModelArg("bn_placement", "between", str, "batch norm placement", choices=BN_PLACEMENTS),
    ModelArg("dropout", 0.0, float, "dropout after the depthwise convs"),
    ModelArg("l2", 0.0, float, "L2 factor on all conv kernels"),
    # Python loop instead of tf.while_loop: for measurements only
    ModelArg("unroll", False, bool, "unroll the loop", flag=False),
)

DEFAULTS = {arg.name: arg.default for arg in MODEL_ARGS}

# The paper's final networks use dropout 0.1 after the depthwise convs and L2 1e-5
# on all conv kernels (SPEC s.4); ablations set both to 0.
PRESETS = {
    "camvid_shared": dict(num_classes=11, width=51, weight_sharing=True, dropout=0.1, l2=1e-5),
    "camvid_independent": dict(num_classes=11, width=29, weight_sharing=False, dropout=0.1, l2=1e-5),
    "cityscapes_shared": dict(num_classes=19, width=51, weight_sharing=True, dropout=0.1, l2=1e-5),
    "tiny": dict(num_classes=4, width=8, num_scales=2, num_iterations=4, expansion=2),
}

# The dataset each preset was made for (its input size lives in `datasets.DATASETS`).
PRESET_DATASET = {
    "camvid_shared": "camvid",
    "camvid_independent": "camvid",
    "cityscapes_shared": "cityscapes",
    "tiny": "builtin",
}

# The datasets `--data` takes (their specs live in `datasets.DATASETS`).
DATASET_NAMES = ("builtin", "camvid", "cityscapes")
AUGMENT_RECIPES = ("paper", "strong")  # training augmentation (`augment.py`, `fit --augment`)
PRECISIONS = ("float32", "mixed_bfloat16")  # Keras dtype policies to train under (`fit --precision`)


def resolve_model_args(preset=None, **overrides):
    """Defaults, then the preset, then `overrides`; validated."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: expected one of {sorted(PRESETS)}")
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown model argument(s) {sorted(unknown)}: expected some of {sorted(DEFAULTS)}")
    args = {**DEFAULTS, **PRESETS.get(preset, {}), **overrides}
    validate_model_args(args)
    return args


def validate_model_args(args):
    def require(ok, name, expected):
        if not ok:
            raise ValueError(f"{name}={args[name]!r}: expected {expected}")

    def is_int(name):
        return isinstance(args[name], int) and not isinstance(args[name], bool)

    require(is_int("num_classes") and args["num_classes"] >= 2, "num_classes", "an integer >= 2")
    # Stage 1 of the data block concatenates round(f/2) - 3 conv channels with the
    # 3 pooled image channels, so it needs round(f/2) > 3.
    require(is_int("width") and args["width"] >= 7, "width", "an integer >= 7 (the data block needs round(f/2) > 3)")
    require(is_int("num_scales") and args["num_scales"] >= 1, "num_scales", "an integer >= 1")
    require(is_int("num_iterations") and args["num_iterations"] >= 1, "num_iterations", "an integer >= 1")
    require(is_int("num_blocks") and args["num_blocks"] >= 1, "num_blocks", "an integer >= 1")
    require(is_int("expansion") and args["expansion"] >= 1, "expansion", "an integer >= 1")
    require(isinstance(args["weight_sharing"], bool), "weight_sharing", "True or False")
    require(args["bn_placement"] in BN_PLACEMENTS, "bn_placement", f"one of {BN_PLACEMENTS}")
    def is_number(name):
        return isinstance(args[name], (int, float)) and not isinstance(args[name], bool)

    require(is_number("dropout") and 0.0 <= args["dropout"] < 1.0, "dropout", "a rate in [0, 1)")
    require(is_number("l2") and math.isfinite(args["l2"]) and args["l2"] >= 0.0, "l2", "a finite factor >= 0")
    require(isinstance(args["unroll"], bool), "unroll", "True or False")
