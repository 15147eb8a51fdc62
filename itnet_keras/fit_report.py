"""What `fit` reports when its epochs are done: the best model, its batch norms recalibrated
over training batches if that scores higher on val, and its evaluation (evaluation.json and
the figures beside the run)."""

import dataclasses
import sys
import time

from itnet_keras.batch_norm import recalibrate, training_images
from itnet_keras.console import progress, uninterrupted
from itnet_keras.evaluate import evaluate_model, load_itnet, training_summary, write_report
from itnet_keras.run_folder import pending_model, promote_pending, record_state, save_model


def report_run(folder, config, state, train, val, weights):
    """The end of a `fit` run: its best model (best.keras, else last.keras), recalibrated if
    that scores higher (`_reported_model`; the checkpoint records it), evaluated on val and
    written beside the run (`evaluate.write_report`); returns that report."""
    best = folder / ("best.keras" if (folder / "best.keras").is_file() else "last.keras")
    epoch = state["best_epoch"] if best.name == "best.keras" else state["epoch"]
    # A file recalibrated in place by an earlier report of this run (a resumed finished run):
    # its batch norms are no longer the training's, and recalibrating again changes nothing.
    done = state.get("recalibrated")
    done = done if done and (done["file"], done["epoch"]) == (best.name, epoch) else None
    if done and config.bn_batches != done["bn_batches"]:
        other = (f"does not redo it (`python -m itnet_keras.recalibrate {best} --batches {config.bn_batches} "
                 "--output NEW.keras` writes another file)" if config.bn_batches
                 else "cannot undo it (the training's moving averages are no longer in that file)")
        print(f"note: {best} (epoch {epoch}) was recalibrated over {done['bn_batches']} batches by an earlier "
              f"report of this run, in place; --bn-batches {config.bn_batches} {other}", file=sys.stderr)
    began = time.monotonic()
    model, result, kept = _reported_model(best, config, train, val, weights, done)
    if kept.get("bn_recalibrated") and done is None:
        # The recalibrated file replaces `best` once the checkpoint records it (a kill before
        # that leaves `best` as training left it, and the resume recalibrates it again).
        save_model(model, pending_model(folder, best.name, epoch, recalibrated=True))
        state["recalibrated"] = {"file": best.name, "epoch": epoch, "bn_batches": config.bn_batches,
                                 "last_output_miou": kept["last_output_miou"]}
        with uninterrupted():
            record_state(folder / "checkpoint.npz", state)
            promote_pending(folder, state)
    source = {"file": best.name, "epoch": epoch, "epochs_trained": state["epoch"],
              "train_seconds": state["train_seconds"], "evaluate_seconds": time.monotonic() - began,
              "bn_batches": done["bn_batches"] if done else config.bn_batches, **kept,
              **training_summary({**dataclasses.asdict(config), "branch": state.get("branch")})}
    return write_report(model, val, folder, label=config.preset, loss_weights=weights, source=source, result=result)


def _reported_model(path, config, train, val, weights, done=None):
    """The model `fit` reports, `path` (best.keras, else last.keras), and its val evaluation.

    With `--bn-batches`, the same weights with their batch norms recalibrated over that many
    training batches (batch_norm.py) are reported instead if they score higher on val at the
    last output, the quantity that chose best.keras (the caller then writes them over `path`);
    otherwise the training's own moving averages stay (recalibration can cost the later
    outputs once they have caught up, docs/training.md).
    `done`: the checkpoint's record that this file was recalibrated so before, reported as such.
    Also returns what the report records of that choice."""
    model = load_itnet(path)
    result = evaluate_model(model, val, weights)
    if done is not None:
        return model, result, {"bn_recalibrated": True, "last_output_miou": done["last_output_miou"]}
    if not config.bn_batches:
        return model, result, {}
    recalibrated = load_itnet(path)
    recalibrate(recalibrated, progress(training_images(train, config.bn_batches, first_epoch=config.epochs),
                                       "batch-norm recalibration", total=config.bn_batches, unit="batches"))
    candidate = evaluate_model(recalibrated, val, weights)
    scores = {"moving_averages": result["outputs"][-1]["miou"], "recalibrated": candidate["outputs"][-1]["miou"]}
    better = scores["recalibrated"] > scores["moving_averages"]
    if better:  # the caller writes it over `path`
        model, result = recalibrated, candidate
    return model, result, {"bn_recalibrated": better, "last_output_miou": scores}
