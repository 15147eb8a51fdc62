"""The iterative block's convolutions ('same' padding, stride 1, odd kernels), in the form
each backend runs fast.

Keras' ops everywhere except on JAX's CPU backend, where XLA is slow at two of them
(docs/benchmarks.md):

- a depthwise conv: XLA's grouped convolution is 10-30x slower there than nine shifted
  multiply-adds, the form used instead, with a gradient that recomputes the shifted
  windows (autodiff would keep all nine for the backward pass);
- the backward pass of a regular conv inside a loop body: XLA's CPU compiler rewrites a
  conv into the layout its Eigen kernels take (`ConvCanonicalization`) in the program's
  entry computation only, so the gradient convs of a loop body ran as naive loops (a
  training step 5-7x slower than the unrolled graph's). There the conv gets its own
  gradient: a conv in that layout for the input's gradient, one matmul per kernel tap for
  the kernel's. Outside a loop XLA's own gradient is faster (by about 10%) and is kept.

`ITNET_CONV_FORM=ops` or `=cpu` forces one form on JAX (to compare on a GPU).
"""

import functools
import os

import keras
from keras import ops

from itnet_keras.devices import accelerated

# jax is imported on the JAX backend only: the model trains on TensorFlow without it.


def cpu_form():
    """Whether the JAX CPU forms run (see the module docstring)."""
    form = os.environ.get("ITNET_CONV_FORM", "auto")
    if form not in ("auto", "ops", "cpu"):
        raise ValueError(f"ITNET_CONV_FORM={form!r}: expected auto, ops or cpu")
    if keras.backend.backend() != "jax" or form == "ops":
        return False
    return form == "cpu" or not accelerated()


def _pad_same(x, kernel_size):
    (kh, kw) = kernel_size
    return ops.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))


def _taps(x, kernel_size):
    """(i, j, the input window tap (i, j) of the kernel reads), for every tap."""
    (height, width), padded = x.shape[1:3], _pad_same(x, kernel_size)
    for i in range(kernel_size[0]):
        for j in range(kernel_size[1]):
            yield i, j, padded[:, i:i + height, j:j + width, :]


def depthwise_conv(x, kernel):
    """Depthwise conv, kernel [kh, kw, channels, 1]."""
    if not cpu_form():
        return ops.depthwise_conv(x, kernel, padding="same")
    return _jax_cpu_depthwise_conv()(x, kernel)


def _shifted_depthwise_conv(x, kernel):
    return sum(window * kernel[i, j, :, 0] for i, j, window in _taps(x, kernel.shape[:2]))


def conv(x, kernel, in_loop=False):
    """Regular conv, kernel [kh, kw, in, out]; `in_loop`: it runs inside a loop body."""
    if not (cpu_form() and in_loop):
        return ops.conv(x, kernel, padding="same")
    return _jax_cpu_conv()(x, kernel)


@functools.cache
def _jax_cpu_conv():
    """A JAX conv whose backward pass is an NHWC/HWIO conv and one matmul per kernel tap."""
    import jax
    from jax import lax

    def forward(x, kernel):
        return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def backward(residuals, grad):
        x, kernel = residuals
        # The input's gradient: the conv of the output's gradient with the flipped kernel.
        grad_x = forward(grad, jax.numpy.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
        # The kernel's: per tap, the window it reads against the output's gradient (row-major taps).
        taps = [jax.numpy.einsum("bhwc,bhwo->co", window, grad) for _, _, window in _taps(x, kernel.shape[:2])]
        return grad_x, jax.numpy.stack(taps).reshape(kernel.shape)

    conv = jax.custom_vjp(forward)
    conv.defvjp(lambda x, kernel: (forward(x, kernel), (x, kernel)), backward)
    return conv


@functools.cache
def _jax_cpu_depthwise_conv():
    """The shifted depthwise conv, with a gradient that keeps only its input for the backward
    pass (autodiff would keep every tap's window: 9x the input, per iteration of the loop)."""
    import jax

    def backward(residuals, grad):
        x, kernel = residuals
        grad_x = _shifted_depthwise_conv(grad, jax.numpy.flip(kernel, (0, 1)))
        taps = [jax.numpy.sum(window * grad, axis=(0, 1, 2)) for _, _, window in _taps(x, kernel.shape[:2])]
        return grad_x, jax.numpy.stack(taps).reshape(kernel.shape)

    conv = jax.custom_vjp(_shifted_depthwise_conv)
    conv.defvjp(lambda x, kernel: (_shifted_depthwise_conv(x, kernel), (x, kernel)), backward)
    return conv
