"""The training configuration: one dataclass, and the command-line flags generated from it."""

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field

from itnet_keras.cli import DATA_DIR_HELP, SEEDS, boolean, crop_size
from itnet_keras.presets import AUGMENT_RECIPES, DATASET_NAMES, MODEL_ARGS, PRECISIONS, PRESETS


def _flag(help, default=None, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class _Training:
    """The fields of `FitConfig` before the model arguments (their order is that of `--help`)."""

    preset: str = _flag("model preset", default="tiny", choices=tuple(PRESETS))
    data: str = _flag("dataset", default="builtin", choices=DATASET_NAMES)
    data_dir: typing.Optional[str] = _flag(DATA_DIR_HELP)
    epochs: int = _flag("number of epochs", default=16)
    batch_size: int = _flag("images per batch", default=8)
    learning_rate: float = _flag("Adam learning rate; x0.1 after 70%% and 85%% of the epochs", default=1e-3)
    output_weights: str = _flag(
        "weights of the N outputs' losses, normalized to sum 1: 'all' (every output alike), 'thinned:K' "
        "(outputs 1, 1+K, 1+2K, ... and N: the paper's final results), 'single:n' (output n only), 'last:m' "
        "(the last m outputs), 'linear' (output n weighs n), or N comma-separated weights such as '0,0,1'",
        default="all")
    bn_batches: int = _flag("after training, re-estimate the batch norms' moving statistics of the reported model "
                            "over this many training batches (dropout off), kept if they score higher on val "
                            "(0: keep the moving averages; see docs/training.md)", default=50)
    precision: str = _flag("Keras dtype policy to train under: 'mixed_bfloat16' computes in bfloat16 with float32 "
                           "weights (faster where the hardware has bfloat16; saved models are float32; see "
                           "docs/benchmarks.md)", default="float32", choices=PRECISIONS)


# Model arguments (`presets.MODEL_ARGS` with a flag): None keeps the preset's value.
_WithModel = dataclasses.make_dataclass(
    "_WithModel", [(arg.name, typing.Optional[arg.type],
                    _flag(f"{arg.help} (default: the preset's; with --resume or --branch-from: the run's)",
                          choices=arg.choices))
                   for arg in MODEL_ARGS if arg.flag], bases=(_Training,))


@dataclass
class FitConfig(_WithModel):
    """The training configuration: training, model arguments, input, run (in this order)."""

    # Input.
    crop: typing.Optional[str] = _flag("training crop HEIGHTxWIDTH (default: the dataset's)")
    scale: int = _flag("downscale images and labels by this integer factor first", default=1)
    augment: str = _flag("training augmentation: 'paper' (flip and crop, the paper's recipe) or 'strong' (also a "
                         "random scale 0.5-2.0 and photometric changes; see docs/training.md)", default="paper",
                         choices=AUGMENT_RECIPES)
    limit: typing.Optional[int] = _flag("use only the first LIMIT images of each split")
    workers: int = _flag("input pipeline threads", default=1)
    # Run.
    seed: int = _flag("random seed (weights, shuffling, augmentation, dropout)", default=0)
    output: str = _flag("run folder", default="runs/itnet")
    resume: bool = _flag("continue the run in --output from its last checkpoint", default=False)
    branch_from: typing.Optional[str] = _flag(
        "start the new run in --output from the last checkpoint of the run in this folder (weights, optimizer "
        "state, epochs done, log rows), with that run's configuration except --augment, --output-weights, "
        "--learning-rate and what --resume may change; config.json and evaluation.json record the branch "
        "(the folder is only read)")
    checkpoint_every: int = _flag("validate and save last.keras, best.keras (when the val mIoU of the last output "
                                  "is the best yet) and the checkpoint every this many epochs and after the last; "
                                  "a resumed run repeats the epochs after its last checkpoint", default=1)
    strategy: str = _flag("mirrored: data parallel over all visible devices (tf.distribute.MirroredStrategy on "
                          "TensorFlow, keras.distribution.DataParallel on JAX)", default="default",
                          choices=("default", "mirrored"))
    remat: bool = _flag("recompute each loop iteration and each output's loss in the backward pass "
                        "instead of keeping their activations, and train on the heads' 1/8-size logits "
                        "(less memory, more compute)", default=False)
    verbose: bool = _flag("show TensorFlow's startup logs and warnings", default=False)

    MODEL_FIELDS = tuple(arg.name for arg in MODEL_ARGS if arg.flag)

    def model_overrides(self):
        return {name: getattr(self, name) for name in self.MODEL_FIELDS if getattr(self, name) is not None}

    @property
    def starts_branch(self):
        """A branch's first start: `--branch-from` without `--resume` (a branch resumes as any run)."""
        return self.branch_from is not None and not self.resume

    POSITIVE_INTS = ("epochs", "batch_size", "limit", "scale", "workers", "checkpoint_every")

    def check_numbers(self):
        """Raise ValueError naming the flag of the first numeric or choice value out of range."""
        for item in dataclasses.fields(self):
            choices, value = item.metadata.get("choices"), getattr(self, item.name)
            if choices and value is not None and value not in choices:
                raise ValueError(f"{flag_of(item.name)} {value!r}: expected one of {', '.join(choices)}")
        for name in self.POSITIVE_INTS:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{flag_of(name)} {value!r}: expected an integer >= 1")
        if not (isinstance(self.bn_batches, int) and self.bn_batches >= 0):
            raise ValueError(f"--bn-batches {self.bn_batches!r}: expected an integer >= 0")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)
                and self.learning_rate > 0):
            raise ValueError(f"--learning-rate {self.learning_rate!r}: expected a finite number > 0")
        crop_size(self.crop)
        if not (isinstance(self.seed, int) and self.seed in SEEDS):
            raise ValueError(f"--seed {self.seed!r}: expected an integer in 0..{SEEDS[-1]}")


def flag_of(name):
    """The command-line flag of a `FitConfig` field: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


def build_parser(prog="python -m itnet_keras.fit"):
    """One flag per `FitConfig` field; flags not given are absent from the namespace."""
    parser = argparse.ArgumentParser(prog=prog, argument_default=argparse.SUPPRESS)
    hints = typing.get_type_hints(FitConfig)
    for item in dataclasses.fields(FitConfig):
        kind = hints[item.name]
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        flag = flag_of(item.name)
        help_text = item.metadata["help"] + (f" (default: {item.default})" if item.default is not None else "")
        if kind is bool and item.default is False:
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            parser.add_argument(flag, type=boolean if kind is bool else kind, help=help_text,
                                choices=item.metadata.get("choices"))
    return parser


def parse_config(argv=None):
    """(FitConfig, names of the flags given on the command line)."""
    given = vars(build_parser().parse_args(argv))
    return FitConfig(**given), set(given)
