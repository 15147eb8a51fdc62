"""The ItNet model: `build_itnet`, and the anytime entry points over a built model.

The functional model has one input `image` [batch, H, W, 3] and N outputs
`output_1 .. output_N` (logits at the input resolution). `encode`, `step`, `finish` and
`anytime` reuse the model's own layers for anytime inference, as export does.
`training_model` is the same network with the outputs before their resize (`fit --remat`);
`float32_model` the same weights in float32 (`fit --precision mixed_bfloat16` saves it).
"""

import contextlib
import weakref

import keras
from keras import ops

from itnet_keras.iterative_block import IterativeBlock
from itnet_keras.layers import DataBlock, OutputResize, resize_like
# A model `fit` saved may hold its compiled loss and metrics: registered here, with the layers,
# so that `keras.models.load_model` finds every class once this module is imported.
from itnet_keras.losses import MaskedCrossEntropy  # noqa: F401
from itnet_keras.metrics import SegmentationMeanIoU  # noqa: F401
from itnet_keras.presets import resolve_model_args


def output_names(num_iterations):
    return [f"output_{n}" for n in range(1, num_iterations + 1)]


def named_outputs(model, images):
    """{output name: logits} of all N outputs, inference mode (a one-output model's call
    returns its tensor alone)."""
    outputs = keras.tree.flatten(model(images, training=False))
    return dict(zip(output_names(len(outputs)), outputs))


def build_itnet(preset=None, input_shape=(None, None, 3), name="itnet", **model_args):
    """Build an ItNet from a preset name and/or model arguments (see `presets.DEFAULTS`).

    Keyword arguments override the preset's values, e.g.
    `build_itnet("camvid_independent", width=30)`.
    """
    args = resolve_model_args(preset, **model_args)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape={input_shape}: expected (height, width, 3), an RGB image")
    images = keras.Input(input_shape, name="image")
    scales = DataBlock(args["width"], args["num_scales"], l2=args["l2"], name="data_block")(images)
    logits = IterativeBlock(**args, name="iterative_block")(scales)
    outputs = [
        OutputResize(index, name=output_name)(logits, images)
        for index, output_name in enumerate(output_names(args["num_iterations"]))
    ]
    return keras.Model(images, outputs, name=name)


def training_model(model):
    """The model `fit --remat` trains: the same layers and weights as `model`, its outputs
    `output_1 .. output_N` the heads' logits before `OutputResize` ([batch, H/8, W/8, C]).

    `MaskedCrossEntropy(resize=True, remat=True)` and `SegmentationMeanIoU(resize=True)`
    resize them to the labels' size one image at a time, the same numbers as `model`'s
    outputs give: a training step then holds N small logits and one image's resized logits
    per output, not N full-size outputs (docs/benchmarks.md). `model` stays the one to save, evaluate and
    export."""
    logits = iterative_block(model).output
    names = output_names(len(model.outputs))
    heads = [keras.layers.Identity(name=name)(logits[index]) for index, name in enumerate(names)]
    return keras.Model(model.input, heads, name=f"{model.name}_training")


def model_args(model):
    """The model arguments an ItNet was built with (read back from its layers)."""
    config = iterative_block(model).get_config()
    return {key: config[key] for key in resolve_model_args()}


@contextlib.contextmanager
def dtype_policy(name):
    """Build layers under Keras' dtype policy `name` (e.g. `mixed_bfloat16`); the global
    policy is restored after."""
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


_float32_twins = weakref.WeakKeyDictionary()


def float32_model(model):
    """`model` if it computes in float32, else a float32 ItNet holding its weights (a mixed-precision
    policy keeps them float32, so they copy exactly): built once per model, its weights copied
    from `model` on every call."""
    if model.dtype_policy.name == "float32":  # the global policy when it was built
        return model
    twin = _float32_twins.get(model)
    if twin is None:
        with dtype_policy("float32"):
            twin = build_itnet(input_shape=model.input_shape[1:], name=model.name, **model_args(model))
        _float32_twins[model] = twin
    twin.set_weights(model.get_weights())
    return twin


def data_block(model):
    return model.get_layer("data_block")


def iterative_block(model):
    return model.get_layer("iterative_block")


def encode(model, images):
    """The data block: images -> the initial state (L scales)."""
    return data_block(model)(images, training=False)


def upsample(logits, output_size=None):
    """Head logits -> `output_size` (default: 8x their size, the input size whenever it is
    a multiple of 8), bilinear, as the model's outputs are."""
    if output_size is None:
        output_size = (8 * logits.shape[1], 8 * logits.shape[2])
    return ops.image.resize(logits, output_size, interpolation="bilinear")


def step(model, state, n, output_size=None):
    """Iteration n (1-based, clamped to 1..N): state -> (state, logits of output n), the
    logits resized by `upsample`."""
    state, logits = iterative_block(model).step(state, n)
    return state, upsample(logits, output_size)


def finish(model, state, n, output_size=None):
    """Output n from the state after n - 1 steps, without the state a further step would
    need (`IterativeBlock.finish`): the cheaper last step."""
    return upsample(iterative_block(model).finish(state, n), output_size)


def anytime(model, images, iterations):
    """Logits of output n = `iterations` (clamped to 1..N), computing only what output n
    reads: n iterations, the last at the finest scale, and for output 1 the data block's
    finest scale alone."""
    data = data_block(model)
    finest = data.finest(images, training=False)
    logits = iterative_block(model).anytime([finest], iterations,
                                            coarser=lambda s: data.coarser(s, training=False))
    return resize_like(logits, images)
