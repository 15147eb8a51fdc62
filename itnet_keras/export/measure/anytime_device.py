"""Anytime prediction on device: an app drives the `encode` and `step` signatures of a
`.tflite` file with LiteRT and decides after every iteration whether to go on.

A *policy* makes that decision: `policy(n, logits, previous, elapsed_s, next_step_s) -> bool`
(go on?), called after iteration n with the logits of output n at the head's resolution
(H/8 x W/8; and those of output n-1, or None), the seconds this image would have taken if it
stopped now (so far, and the full-resolution upsampling of the answer, as long as the last
one) and those the next step is expected to take (step n + 1 as it took on the image before:
steps differ, the first has no mixing block). Policies here:

- `fixed(n)`: every image gets n iterations;
- `deadline(seconds)`: go on while one more step (as expected) fits the deadline;
- `until_stable(fraction)`: stop once at most `fraction` of the pixels changed class;
- `until_confident(probability)`: stop once the mean top-class probability reaches it;
- `either(a, b)`: stop as soon as one of them says stop (the budgeted batch of Sec. 1).
"""

from time import perf_counter

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from itnet_keras.evaluate import split_confusion_matrices
from itnet_keras.export.camera_input import image_for
from itnet_keras.export.flatbuffer import iterations_of
from itnet_keras.metrics import mean_iou


def fixed(n):
    return lambda done, logits, previous, elapsed, next_step: done < n


def deadline(seconds):
    return lambda done, logits, previous, elapsed, next_step: elapsed + next_step <= seconds


def until_stable(fraction):
    def go_on(done, logits, previous, elapsed, next_step):
        if previous is None:
            return True
        return np.mean(logits.argmax(-1) != previous.argmax(-1)) > fraction

    return go_on


def until_confident(probability):
    def go_on(done, logits, previous, elapsed, next_step):
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        return np.mean(shifted.max(-1) / shifted.sum(-1)) < probability

    return go_on


def either(*policies):
    return lambda *args: all(policy(*args) for policy in policies)


class StepRunner:
    """The `encode` and `step` signatures of a loop `.tflite` file, driven one image at a time.
    A file that takes camera bytes (`--input-type uint8|int8`) needs the dataset's
    `normalization`: the images given are normalized, as a dataset yields them.

    The runner keeps each step's and the upsampling's latest time, the estimates a policy gets.
    They start as the medians of three warm-up passes over all N steps (a first call is slow,
    and a step that a policy then never reaches would keep its first time); a step that no
    image reaches any more keeps its last estimate."""

    def __init__(self, path, threads=2, normalization=None):
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.encode = interpreter.get_signature_runner("encode")
        self.image = image_for(self.encode, normalization)
        self.step = interpreter.get_signature_runner("step")
        self.upsample = interpreter.get_signature_runner("upsample")
        self.state_names = sorted(k for k in self.step.get_output_details() if k.startswith("state_"))
        self.num_iterations = iterations_of(path)
        self.step_s, self.upsample_s = [0.0] * self.num_iterations, 0.0
        details = self.encode.get_input_details()["image"]
        passes = []
        for _ in range(3):
            self.run(np.zeros(details["shape"][1:], details["dtype"]), fixed(self.num_iterations), warm_up=True)
            passes.append([*self.step_s, self.upsample_s])
        *self.step_s, self.upsample_s = np.median(passes, axis=0).tolist()

    def run(self, image, policy, warm_up=False):
        """(logits of the last output computed, iterations done, seconds) for one image [H, W, 3].

        Policies see the head's logits (H/8 x W/8, as `step` returns them); the kept logits
        are upsampled to H x W once, and that counts in the seconds (and in the policy's
        `elapsed_s`, as the last upsampling took). `warm_up`: `image` as the file takes it."""
        start = perf_counter()
        state = self.encode(image=image[None] if warm_up else self.image(image[None]))
        logits, previous, done = None, None, 0
        while done < self.num_iterations:
            before = perf_counter()
            out = self.step(**state, n=np.int32(done + 1))
            done += 1
            state = {k: out[k] for k in self.state_names}
            previous, logits = logits, out["logits"]
            now = perf_counter()
            self.step_s[done - 1] = now - before
            next_step = self.step_s[done] if done < self.num_iterations else 0.0
            if not policy(done, logits[0], None if previous is None else previous[0],
                          now - start + self.upsample_s, next_step):
                break
        before = perf_counter()
        logits = self.upsample(logits=logits)["logits"][0]
        end = perf_counter()
        self.upsample_s = end - before
        return logits, done, end - start


def evaluate_policy(runner, dataset, policy):
    """mIoU over the split with `policy` deciding per image; iterations and time per image."""
    iterations, seconds = [], []

    def predict(images):
        classes = []
        for image in images:
            logits, done, spent = runner.run(image, policy)
            classes.append(logits.argmax(-1))
            iterations.append(done)
            seconds.append(spent)
        return np.stack(classes)[None]

    (matrix,), _ = split_confusion_matrices(dataset, predict)
    return {"miou": mean_iou(matrix), "mean_iterations": float(np.mean(iterations)),
            "iterations": np.bincount(iterations, minlength=runner.num_iterations + 1)[1:].tolist(),
            "mean_ms": 1e3 * float(np.mean(seconds)), "max_ms": 1e3 * float(np.max(seconds))}


def sweep(runner, dataset, deadline_fractions=(0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5),
          stable_fractions=(0.05, 0.02, 0.01, 0.005, 0.002), confidence_levels=(0.8, 0.85, 0.9, 0.95),
          either_pairs=((0.01, 0.9), (0.005, 0.95))):
    """Every policy of this module over a split: `fixed` for n = 1..N, `deadline` at fractions
    of the mean time of all N iterations (`full_ms`), and the adaptive policies (`stable`,
    `confident`, and `either` of a (stable, confident) pair)."""
    n_max = runner.num_iterations
    fixed_budgets = {n: evaluate_policy(runner, dataset, fixed(n)) for n in range(1, n_max + 1)}
    full_ms = fixed_budgets[n_max]["mean_ms"]
    deadlines = {f: evaluate_policy(runner, dataset, deadline(f * full_ms / 1e3)) for f in deadline_fractions}
    adaptive = {f"stable {f}": evaluate_policy(runner, dataset, until_stable(f)) for f in stable_fractions}
    adaptive.update({f"confident {p}": evaluate_policy(runner, dataset, until_confident(p)) for p in confidence_levels})
    for f, p in either_pairs:
        policy = either(until_stable(f), until_confident(p))
        adaptive[f"stable {f} or confident {p}"] = evaluate_policy(runner, dataset, policy)
    return {"fixed": fixed_budgets, "full_ms": full_ms, "deadline": deadlines, "adaptive": adaptive}
