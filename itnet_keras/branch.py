"""A branch: a new `fit` run that starts where another stands (`--branch-from RUN`), from
RUN's last checkpoint (weights, optimizer state, epochs done and so the learning-rate
schedule, log rows), with RUN's configuration but for what a branch may change (another
`--augment`, `--output-weights` or `--learning-rate` from epoch N on). RUN is only read;
the branch's config.json, checkpoint and evaluation.json record where it came from."""

import dataclasses
from pathlib import Path

from itnet_keras.config import flag_of
from itnet_keras.run_folder import RESUME_MAY_CHANGE, ConfigError, committed_epoch, kept_config, read_run_config, trim_log

BRANCH_MAY_CHANGE = RESUME_MAY_CHANGE | {"augment", "output_weights", "learning_rate"}
BRANCH_RECORDS = ("augment", "epochs", "learning_rate", "output_weights")  # what the branch learns: its record


def branch(config, given):
    """Check a branch (`--branch-from`): a new run in `config.output` (locked, without a
    checkpoint) that starts from the last checkpoint of the run in `config.branch_from`, with
    that run's configuration but for the flags in `BRANCH_MAY_CHANGE` given (e.g. another
    `--augment` from epoch 313 on); returns the configuration to run it with. `fit` then loads
    the source's checkpoint (its weights, optimizer state, epochs done and so its learning-rate
    schedule), gives it `branch_state` and copies the source's log rows (`copy_log`) after the
    data is checked; the branch's own checkpoint makes it a run, as for a new run. The source
    folder is only read."""
    if not config.branch_from:
        raise ConfigError("--branch-from '': expected the folder of a run")
    source = Path(config.branch_from)
    flag = f"--branch-from {source}"
    if not (source / "checkpoint.npz").is_file():
        raise ConfigError(f"{flag}: {source / 'checkpoint.npz'} does not exist (no run to branch from)")
    branched = kept_config(config, given, source, BRANCH_MAY_CHANGE, "a branch", flag)
    done = committed_epoch(source)
    if done >= branched.epochs:
        raise ConfigError(f"--epochs {branched.epochs}: the run in {source} has completed {done} epochs; a branch "
                          f"trains more (--epochs M, M > {done})")
    return dataclasses.replace(branched, resume=False, branch_from=str(source))  # kept on its own --resume


def branch_state(config, state):
    """The progress a branch starts with, from its source's checkpoint `state`: the epochs
    done and their wall time, no best model yet (best.keras is the branch's own) and the
    record of where it branched, which the checkpoint keeps and config.json and
    evaluation.json repeat: "branch": the run, the epoch, the flags that change what it
    learns (`BRANCH_RECORDS`) as [source's, branch's], and the source's own such record
    where the source is a branch ("source_branch")."""
    saved = read_run_config(config.branch_from, flag=f"--branch-from {config.branch_from}")
    changed = {flag_of(name): [getattr(saved, name), getattr(config, name)]
               for name in BRANCH_RECORDS if getattr(saved, name) != getattr(config, name)}
    record = {"from": config.branch_from, "epoch": state["epoch"], "changed": changed,
              **({"source_branch": state["branch"]} if "branch" in state else {})}
    return {"epoch": state["epoch"], "best": -1.0, "best_epoch": None, "train_seconds": state["train_seconds"],
            "branch": record}


def copy_log(source, folder, epochs_done):
    """A branch's log.csv: its source's rows of the epochs its checkpoint holds (none where
    the source has no log: an earlier start's file is removed)."""
    (Path(folder) / "log.csv").unlink(missing_ok=True)
    trim_log(Path(source) / "log.csv", epochs_done, to=Path(folder) / "log.csv")
