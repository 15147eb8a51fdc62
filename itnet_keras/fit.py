"""Train an ItNet with one loss per output: `python -m itnet_keras.fit [flags]`.

With no flags it trains the tiny preset on the built-in dataset (about a minute and a
half on 2 CPU cores). The run folder (`--output`) receives:

    run.lock           held (fcntl.flock) by the one run using the folder; the OS releases it
                       when the process ends, however it ends
    config.json        the resolved configuration and model arguments
    checkpoint.npz     weights + optimizer state + progress, rewritten after every epoch
                       (or every --checkpoint-every epochs)
    last.keras, best.keras   the latest model and the best one (val mIoU of the last output);
                       at the end the reported one's batch norms are recalibrated (--bn-batches)
                       if that scores higher on val. Each is written as .NAME-epochN.pending.keras
                       first and renamed after the checkpoint of epoch N
    log.csv, tensorboard/    per-epoch logs (log.csv's `epoch` counts from 0, as Keras'
                       CSVLogger writes it: epoch 81, 1-based as everywhere else, is its row 80)
    evaluation.json, miou_over_macs.png, predictions.png   the final evaluation (on val)

Every file but the logs is written atomically; the logs, appended to, are written before the
checkpoint, and a resume drops what they hold past it. `--resume` continues from the last checkpoint
with the same optimizer state, learning-rate schedule and batches. `--resume --epochs M`
sets a new total (also of a finished run); the learning-rate steps move to 70% and 85%
of the new total (see docs/reliability.md). `--branch-from RUN --output NEW` starts a new run
where RUN stands, with another recipe (`--augment`, `--output-weights`, `--learning-rate`;
`branch.py`); RUN is only read.
"""

import contextlib
import dataclasses
import gc
import json
import sys
from pathlib import Path

from itnet_keras.cli import crop_size
from itnet_keras.config import flag_of, parse_config
from itnet_keras.console import quiet_startup, quietly, stoppable, stopped_by

if __name__ == "__main__":  # --help and flag errors answer, and TensorFlow loads quietly, before the imports below
    quiet_startup(parse_config(sys.argv[1:])[0].verbose)

import keras  # noqa: E402

from itnet_keras.augment import SizeError  # noqa: E402
from itnet_keras.branch import branch, branch_state, copy_log  # noqa: E402
from itnet_keras.callbacks import EpochProgress, EpochSummary, EpochTensorBoard, StopOnNaN  # noqa: E402
from itnet_keras.datasets import check_split, default_data_dir  # noqa: E402
from itnet_keras.evaluate import format_outputs  # noqa: E402
from itnet_keras.files import write_atomic  # noqa: E402
from itnet_keras.fit_report import report_run  # noqa: E402
from itnet_keras.losses import MaskedCrossEntropy, output_weights  # noqa: E402
from itnet_keras.metrics import SegmentationMeanIoU  # noqa: E402
from itnet_keras.model import (  # noqa: E402
    build_itnet, dtype_policy, iterative_block, model_args, output_names, training_model,
)
from itnet_keras.pipeline import SyncEpoch, make_dataset  # noqa: E402
from itnet_keras.run_folder import (  # noqa: E402
    ConfigError, RunCheckpoint, TrainingError, checkpoint_epochs, committed_epoch, load_checkpoint, locked_folder,
    prepare_folder, promote_pending, trim_log,
)

# TensorFlow is imported where used: `--strategy mirrored` on that backend only.


def learning_rate_schedule(learning_rate, total_steps):
    """`learning_rate` for the first 70% of the steps, x0.1 up to 85%, x0.01 after (SPEC s.4).

    Integer arithmetic (int(0.7 * 90000) is 62999), and boundaries one below the step counts:
    Keras keeps a rate while the 0-based step is at most its boundary."""
    first = max(1, 7 * total_steps // 10)
    second = max(first + 1, 17 * total_steps // 20)
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [first - 1, second - 1], [learning_rate, learning_rate * 0.1, learning_rate * 0.01])


def compile_model(model, config, spec, steps_per_epoch):
    """Compile the model `fit` trains with one loss per output and the step schedule; returns
    it and the output weights. That model is `model`, or with `--remat` `training_model(model)`:
    the heads' logits, which the losses and the mIoU metrics resize (docs/benchmarks.md), and
    whose loop body is recomputed in the backward pass."""
    iterative_block(model).remat = config.remat
    heads = config.remat
    trained = training_model(model) if heads else model
    names = trained.output_names
    try:
        weights = output_weights(config.output_weights, len(names))
    except ValueError as error:
        raise ConfigError(f"--output-weights: {error}") from error
    schedule = learning_rate_schedule(config.learning_rate, config.epochs * steps_per_epoch)
    trained.compile(
        optimizer=keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.999),
        loss={name: MaskedCrossEntropy(spec.ignore_label, remat=config.remat, resize=heads) for name in names},
        loss_weights=dict(zip(names, weights)),
        # Keras prefixes a metric with its output's name only when there are several outputs:
        # a single output's is named so here, and the logs read output_1_miou for every N.
        metrics={name: [SegmentationMeanIoU(spec.num_classes, spec.ignore_label, resize=heads,
                                            name="miou" if len(names) > 1 else f"{name}_miou")]
                 for name in names},
    )
    return trained, weights


def _datasets(config):
    crop = crop_size(config.crop)  # checked with the other flags (`FitConfig.check_numbers`)
    common = dict(data_dir=config.data_dir, scale=config.scale, limit=config.limit, batch_size=config.batch_size)
    try:
        train = make_dataset(config.data, "train", training=True, seed=config.seed, crop=crop,
                             workers=config.workers, augment=config.augment, **common)
        val = make_dataset(config.data, "val", pad_last=True, **common)
    except SizeError as error:  # a value of --scale, --crop or --batch-size that the data does not fit
        if error.argument == "batch_size":
            limit = f" (--limit {config.limit})" if config.limit else ""
            raise ConfigError(f"--batch-size {config.batch_size}: {error}{limit}") from None
        raise ConfigError(f"--{error}") from None
    return train, val


def _strategy(config):
    """None, or for `--strategy mirrored` data parallel over all visible devices (each batch
    split across them): `tf.distribute.MirroredStrategy` on TensorFlow,
    `keras.distribution.DataParallel` on JAX."""
    if config.strategy == "default":
        return None
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy()
    if backend != "jax":
        raise ConfigError(f"--strategy mirrored: not available on the {backend} backend (TensorFlow or JAX)")
    devices = keras.distribution.list_devices()
    if config.batch_size % len(devices):
        raise ConfigError(f"--batch-size {config.batch_size}: --strategy mirrored splits every batch over the "
                          f"{len(devices)} visible devices; expected a multiple of {len(devices)}")
    return keras.distribution.DataParallel(devices=devices)


def _scope(strategy):
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def _build(config, spec):
    """The model; a bad model flag is named as the flag."""
    try:
        return build_itnet(config.preset, num_classes=spec.num_classes, **config.model_overrides())
    except ValueError as error:
        for name in config.model_overrides():
            if str(error).startswith(f"{name}="):
                raise ConfigError(f"{flag_of(name)} {getattr(config, name)!r}: "
                                  f"{str(error).split(': ', 1)[1]}") from None
        raise


def run(config, given=frozenset(), callbacks=()):
    """Train (or resume) per `config`; returns the final evaluation (see `evaluate`).

    `given` names the flags set on the command line (a resumed run checks them against
    its saved configuration); `callbacks` are extra Keras callbacks, run after ours.
    The run holds the folder's lock throughout (see `locked_folder`).
    """
    try:
        config.check_numbers()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    with locked_folder(config.output):
        prepared = prepare_folder(config, set(given))
        if prepared.starts_branch:
            prepared = branch(prepared, set(given))
        return _run(prepared, callbacks)


def _check_steps(config, steps, epochs, steps_per_epoch):
    """A resumed run's data gives the batches an epoch its optimizer took: the learning-rate
    steps and the epochs' batch order count on it."""
    if steps != epochs * steps_per_epoch:
        raise ConfigError(f"--data-dir {config.data_dir or default_data_dir(config.data)}: its train split gives "
                          f"{steps_per_epoch} batches an epoch, but the run's {epochs} epochs took {steps} steps: "
                          "give the data the run was trained on")


def _run(config, callbacks):
    folder = Path(config.output)
    keras.utils.set_random_seed(config.seed)
    train, val = _datasets(config)  # the samples' paths: nothing decoded yet
    spec = train.spec
    strategy = _strategy(config)
    with _scope(strategy), dtype_policy(config.precision):  # the layers keep the policy they are built under
        model = _build(config, spec)
        names = output_names(len(model.outputs))
        train.output_names = val.output_names = names
        trained, weights = compile_model(model, config, spec, len(train))  # `model` is the one saved
    state = {"epoch": 0, "best": -1.0, "best_epoch": None, "train_seconds": 0.0}
    branching = config.starts_branch
    if config.resume or branching:  # a checkpoint from before `train_seconds` was recorded: unknown
        source = Path(config.branch_from) if branching else folder
        with _scope(strategy):  # the optimizer's variables, as the model's
            state = {"train_seconds": None, **load_checkpoint(source / "checkpoint.npz", trained)}
        _check_steps(config, int(keras.ops.convert_to_numpy(trained.optimizer.iterations)), state["epoch"], len(train))
        if branching:
            state = branch_state(config, state)
        done = state.get("recalibrated")
        if done and (done["file"], done["epoch"]) == ("best.keras", state["best_epoch"]):
            # best.keras was recalibrated in place: a further epoch replaces it only if it beats that score
            state["best"] = max(state["best"], done["last_output_miou"]["recalibrated"])
    check_split(train.split)  # every image and label, before the first step and before the folder changes
    check_split(val.split)
    if config.resume:
        trim_log(folder / "log.csv", state["epoch"])
        promote_pending(folder, state)
    elif branching:
        copy_log(config.branch_from, folder, state["epoch"])
    resolved = {"fit": dataclasses.asdict(config), "model": model_args(model), "dataset": spec.name,
                **({"branch": state["branch"]} if "branch" in state else {})}
    write_atomic(folder / "config.json", json.dumps(resolved, indent=1))
    validated = checkpoint_epochs(config.checkpoint_every, config.epochs)  # validation chooses best.keras
    checkpoint = RunCheckpoint(folder, f"val_{names[-1]}_miou", state, model, validated)
    # log.csv and TensorBoard before the checkpoint, the commit point: a kill between them leaves
    # an epoch that is not committed, which resuming drops and writes again (the other order loses it).
    callbacks = [
        SyncEpoch(train), StopOnNaN(), keras.callbacks.CSVLogger(str(folder / "log.csv"), append=config.resume or branching),
        EpochTensorBoard(folder / "tensorboard", state["epoch"]),
        checkpoint, EpochProgress(config.epochs, len(train), len(val), validated), EpochSummary(config.epochs, names),
        *callbacks,
    ]
    if state["epoch"] < config.epochs:
        # JAX's distribution splits the batches only inside its scope; TensorFlow's strategy needs none here.
        with _scope(strategy if keras.backend.backend() == "jax" else None):
            trained.fit(train, validation_data=val, epochs=config.epochs, initial_epoch=state["epoch"],
                        validation_freq=validated,
                        shuffle=False, callbacks=callbacks, verbose=0)
        # A training stopped mid-epoch leaves tf.data's generator iterator in a reference
        # cycle; freed at exit, it prints "[[{{node PyFunc}}]]" errors. Free it now.
        gc.collect()
    if checkpoint.nan_epoch is not None:
        if not (folder / "checkpoint.npz").is_file():  # a new run's or a branch's first checkpoint
            before = ("the branch's first checkpoint" if branching else
                      "any epoch completed" if config.checkpoint_every == 1 else "the first checkpoint")
            again = "the same command branches again" if branching else "start the run again"
            raise TrainingError(f"the {checkpoint.nan_in} became NaN in epoch {checkpoint.nan_epoch}, before {before}, "
                                f"so {folder} holds no checkpoint: {again} (a lower --learning-rate?)")
        raise TrainingError(f"the {checkpoint.nan_in} became NaN in epoch {checkpoint.nan_epoch}; training stopped and the "
                            f"checkpoint of epoch {state['epoch']} in {folder} is kept")
    return report_run(folder, config, state, train, val, weights)


def main(argv=None):
    config, given = parse_config(argv)
    quiet_startup(config.verbose)
    stopped = None
    try:
        with stoppable():
            result = run(config, given)
    except (ConfigError, TrainingError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        stopped = stopped_by(interrupt)
    if stopped:
        with quietly():  # the interrupted epoch's tf.data iterator, freed now: its C++ errors would print at exit
            gc.collect()
        name, code = stopped
        try:
            epoch = committed_epoch(config.output)
        except TrainingError as error:
            print(f"stopped by {name}: {error}", file=sys.stderr)
            return code
        if epoch is None:
            print(f"stopped by {name} before the first checkpoint: {config.output} holds nothing to resume; "
                  "the same command starts the run again", file=sys.stderr)
        else:
            print(f"stopped by {name}: {config.output} keeps the checkpoint of epoch {epoch}; "
                  f"`python -m itnet_keras.fit --output {config.output} --resume` goes on from there", file=sys.stderr)
        return code
    source = result["model"]
    print(f"{source['file']} is from epoch {source['epoch']} of {source['epochs_trained']}")
    if source["bn_batches"]:
        scores = source["last_output_miou"]
        kept = (f"recalibrated over {source['bn_batches']} batches" if source["bn_recalibrated"]
                else "the training's moving averages")
        print(f"its batch norms: {kept} (val mIoU of the last output {scores['recalibrated']:.4f} recalibrated, "
              f"{scores['moving_averages']:.4f} with the moving averages)")
    print("val mIoU per output:")
    print(format_outputs(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
