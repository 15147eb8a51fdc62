"""`IterativeBlock`: the iterative block, the batch norms between iterations and the N
classification heads: iteration 1, then iterations 2..N in one loop (a `WHILE` in TensorFlow,
`fori_loop` under JAX; SPEC s.2 and s.3)."""

import keras
from keras import ops

from itnet_keras.block_iteration import BlockIteration
from itnet_keras.iteration_weights import ConvRow, IterationWeights
from itnet_keras.layers import register

# TensorFlow and JAX are imported inside the branches that run on that backend only: the
# model trains on either backend without the other installed.


@register
class IterativeBlock(BlockIteration, IterationWeights, keras.layers.Layer):
    """The iterative block, run `num_iterations` times: the first, then one loop for the rest.

    Input: the L scales of the data block. Output: the logits of the N
    classification heads (1x1 convs on S_1), stacked to [N, batch, h_1, w_1, C].

    Per-iteration parameters (batch norms, heads, and with `weight_sharing=False`
    every block weight) carry a leading axis and are picked by the loop counter,
    so both variants run through the same loop. Iteration 1 skips the mixing
    block (its weights, when stacked, have N - 1 rows). During training the loop
    emits its batch statistics; the moving statistics are updated once, after it.
    """

    def __init__(self, num_classes, width, num_scales=3, num_iterations=16, num_blocks=1,
                 expansion=6, weight_sharing=True, bn_placement="between", dropout=0.0,
                 l2=0.0, unroll=False, momentum=0.99, epsilon=1e-3, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.width = width
        self.num_scales = num_scales
        self.num_iterations = num_iterations
        self.num_blocks = num_blocks
        self.expansion = expansion
        self.weight_sharing = weight_sharing
        self.bn_placement = bn_placement
        self.dropout = dropout
        self.l2 = l2
        self.unroll = unroll
        self.momentum = momentum
        self.epsilon = epsilon
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    # Set by training (`fit --remat`), not saved: recompute each iteration in the backward pass.
    remat = False

    # -- structure -----------------------------------------------------------------

    def conv_rows(self):
        """One iteration's convs at one scale (`ConvRow`s: name, kernel shape, depthwise, part)."""
        f, wide = self.width, self.expansion * self.width
        rows = []
        if self.num_iterations > 1:
            rows += [ConvRow("mix_conv", (3, 3, self.num_scales * f, f), False, "mix"),
                     ConvRow("mix_proj", (1, 1, self.num_scales * f, f), False, "mix")]
        for k in range(1, self.num_blocks + 1):
            rows += [ConvRow(f"block{k}_expand", (1, 1, f, wide), False, "block"),
                     ConvRow(f"block{k}_depthwise", (3, 3, wide, 1), True, "block"),
                     ConvRow(f"block{k}_project", (1, 1, wide, f), False, "block")]
        return rows

    def head_row(self):
        return ConvRow("head", (1, 1, self.width, self.num_classes), False, "head")

    def build(self, input_shape):
        self._usage = {}
        every_conv = self.bn_placement == "every_conv"
        independent = not self.weight_sharing
        for l in range(1, self.num_scales + 1):
            for name, kernel, depthwise, part in self.conv_rows():
                out = kernel[2] if depthwise else kernel[3]
                key = f"scale{l}_{name}"
                self._add(key + "_kernel", kernel, part, independent, "glorot_uniform", regularize=True)
                if every_conv:  # the norm's beta replaces the bias
                    self._add_norm(key + "_bn", out, part)
                else:
                    self._add(key + "_bias", (out,), part, independent, "zeros")
            if not every_conv:
                self._add_norm(f"scale{l}_bn", self.width, "between")
        name, kernel, _, part = self.head_row()
        self._add("head_kernel", kernel, part, True, "glorot_uniform", regularize=True)
        self._add("head_bias", (kernel[3],), part, True, "zeros")

    def _add_norm(self, key, channels, part):
        """A batch norm with per-iteration parameters and moving statistics."""
        for suffix, init, trainable in (("gamma", "ones", True), ("beta", "zeros", True),
                                        ("moving_mean", "zeros", False), ("moving_var", "ones", False)):
            self._add(f"{key}_{suffix}", (channels,), part, True, init, trainable=trainable)

    # -- the loop ------------------------------------------------------------------

    def clamp(self, iterations):
        """A run-time iteration count clamped to [1, N] (Python ints stay Python ints)."""
        if isinstance(iterations, int):
            return min(max(iterations, 1), self.num_iterations)
        return ops.clip(ops.cast(iterations, "int32"), 1, self.num_iterations)

    def _loop(self, body, count, loop_vars):
        """`loop_vars = body(n, *loop_vars)` for n = 1 .. count - 1: a `tf.while_loop`, a
        Python loop with `unroll=True`, a differentiable scan on JAX with a Python count."""
        if (isinstance(count, int) and count <= 1) or self.num_iterations == 1:
            return loop_vars
        if self.unroll:
            if not isinstance(count, int):
                raise ValueError("unroll=True needs a Python int iteration count")
            for n in range(1, count):
                loop_vars = body(n, *loop_vars)
            return loop_vars
        if keras.backend.backend() == "jax" and isinstance(count, int):
            return ops.fori_loop(1, count, lambda n, v: body(n, *v), loop_vars)
        return ops.while_loop(lambda n, *_: n < count, lambda n, *v: (n + 1, *body(n, *v)), (1, *loop_vars),
                              maximum_iterations=self.num_iterations - 1)[1:]

    def _run(self, state, training, iterations, collect):
        """Run the loop; returns (all logits [N, ...] or the latest logits, final state)."""
        count = self.num_iterations if iterations is None else self.clamp(iterations)
        state = list(state)
        stats = self._empty_stats() if training else {}
        seed = None
        if training and self.dropout > 0:
            seed = self.step_seed()

        def iteration(n, state, stats):
            return self._iteration(state, n, training, stats, seed, mixes=True, head=collect)

        if training and self.remat:
            iteration = self._rematerialized(iteration)

        def body(n, state, out, stats):
            state, logits, stats = iteration(n, state, stats)
            if collect:
                # A shift, not a scatter update: the converter's int8 SCATTER_ND fills with
                # raw int8 zeros that ignore the zero point, which garbled the stack.
                out = ops.concatenate([out[1:], logits[None]], axis=0)
            return state, out, stats

        # Iteration 1 (no mixing) runs before the loop, so the loop body has no branch.
        state, logits, stats = self._iteration(state, 0, training, stats, seed, head=collect)
        # The stack starts as N copies of output 1; after the N - 1 shifts of the loop,
        # row n holds output n + 1. (`collect` runs all N iterations.) Without `collect`
        # only the last iteration's head runs, after the loop.
        out = ops.broadcast_to(logits[None], (self.num_iterations, *ops.shape(logits))) if collect else ()
        state, out, stats = self._loop(body, count, (state, out, stats))
        if training:
            self._update_moving_stats(stats, count)
        if not collect:
            out = self._conv(state[0], "head", count - 1)
        return out, state

    def _last_output(self, state, count, coarser=None):
        """Logits of output `count` (clamped), inference. The last iteration runs at the
        finest scale only (`_finest`): the coarser scales would feed only an iteration that
        does not come. Output 1 needs no loop; a run-time count picks a branch (an `IF`
        whose second branch holds the `WHILE` in an exported file). With `coarser` (S_1 ->
        S_2 .. S_L, the data block's), `state` may be [S_1] alone: the coarser scales are
        computed in that branch only."""
        count = self.clamp(count)

        def later():  # count >= 2: count - 1 full iterations (`_run`), the finest scale of count
            scales = list(state) if coarser is None else [state[0], *coarser(state[0])]
            _, full = self._run(scales, False, count - 1, collect=False)  # its head: unused, pruned
            return self._finest(full, count - 1, mixes=True)

        first = lambda: self._finest(list(state), 0)  # noqa: E731
        if isinstance(count, int):
            return first() if count == 1 else later()
        return ops.cond(count > 1, later, first)

    def call(self, scales, training=None):
        """All N outputs' logits, stacked: [N, batch, h_1, w_1, C]."""
        return self._run(scales, bool(training), None, collect=True)[0]

    def anytime(self, scales, iterations, with_state=False, coarser=None):
        """Logits after `iterations` iterations (clamped to 1..N), inference mode. With
        `with_state`, (logits, final state), which needs every scale of the last iteration;
        without, the last iteration runs at the finest scale only, and with `coarser`,
        `scales` may be [S_1] alone (see `_last_output`)."""
        if with_state:
            return self._run(scales, False, iterations, collect=False)
        return self._last_output(scales, iterations, coarser)

    def step(self, state, n):
        """One iteration in inference mode: 1-based n (clamped) -> (state, logits)."""
        n = self.clamp(n) - 1
        state, logits, _ = self._iteration(list(state), n, False, {}, None)
        return state, logits

    def finish(self, state, n):
        """Iteration n (1-based, clamped) at the finest scale only -> logits of output n, the
        same as `step`'s. For the last step of an app that knows it is the last: it skips the
        coarser scales, which only a further step would read."""
        return self._finest(list(state), self.clamp(n) - 1)

    def compute_output_shape(self, input_shape):
        batch, height, width = input_shape[0][:3]
        return (self.num_iterations, batch, height, width, self.num_classes)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes, "width": self.width, "num_scales": self.num_scales,
            "num_iterations": self.num_iterations, "num_blocks": self.num_blocks,
            "expansion": self.expansion, "weight_sharing": self.weight_sharing,
            "bn_placement": self.bn_placement, "dropout": self.dropout, "l2": self.l2,
            "unroll": self.unroll, "momentum": self.momentum, "epsilon": self.epsilon, "seed": self.seed,
        }
