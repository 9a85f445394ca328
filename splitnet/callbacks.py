"""Keras callbacks for splitnet's own training runs (`splitnet train`, `splitnet run`).

* `StopOnNonFiniteLoss`: a NaN or infinite loss stops training with an error.
* `EpochCheckpoint`: the model is saved after every epoch, so a stopped run
  can resume.
* `InterruptAtBatchEnd`: Ctrl-C stops training between two batches.

Any Keras training can use them; they do not depend on the model being split.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import keras

from splitnet._startup import HeldCtrlC
from splitnet.errors import TrainingDiverged


def _end_progress_line(callback):
    """A progress bar leaves its line open mid-epoch; end it before a message follows."""
    if (callback.params or {}).get("verbose"):
        sys.stdout.write("\n")
        sys.stdout.flush()


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop `fit` with `TrainingDiverged` as soon as the loss is NaN or infinite.

    Keras' own `TerminateOnNaN` stops quietly and `fit` returns as if it had
    finished; a run should fail instead, saying when, before anything is saved.

    Example:
        >>> model.fit(x, y, callbacks=[StopOnNonFiniteLoss()])  # doctest: +SKIP
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            _end_progress_line(self)
            raise TrainingDiverged.at(float(loss), self.epoch + 1, batch + 1)


class EpochCheckpoint(keras.callbacks.Callback):
    """Save the model after every epoch, so that a stopped run can resume.

    The checkpoint is a complete `.keras` file (written atomically) with the
    optimizer state and the train `settings` plus `completed_epochs`;
    `splitnet train CHECKPOINT` resumes at the next epoch. The job removes it
    when it ends well (`remove`) and names it when it does not (`resume_hint`).

    Args:
        path: The checkpoint file.
        settings: `train.settings_dict(...)`: stored with the model.
        output: The output a resumed `splitnet train` should write, for the hint.

    Example:
        >>> checkpoint = EpochCheckpoint("t.checkpoint.keras", settings, "t.keras")  # doctest: +SKIP
        >>> model.fit(x, y, epochs=5, callbacks=[checkpoint])  # doctest: +SKIP
    """

    def __init__(self, path, settings, output):
        super().__init__()
        self.path, self.settings, self.output = Path(path), dict(settings), output
        self.completed = None

    def on_epoch_end(self, epoch, logs=None):
        from splitnet.files import save_keras
        from splitnet.train import for_file

        settings = for_file({**self.settings, "completed_epochs": epoch + 1}, self.path)
        save_keras(self.model, self.path, force=True, settings=settings)
        self.completed = epoch + 1

    def resume_hint(self):
        """Where the last finished epoch's model is and how to go on, or "" before the first."""
        if self.completed is None or not self.path.exists():
            return ""
        total = self.settings["epochs"]
        how = "resume" if self.completed < total else "all epochs are done; save it"
        return (
            f"the model after epoch {self.completed} of {total} is in {self.path}; "
            f"{how} with `splitnet train {self.path} -o {self.output}`"
        )

    def remove(self):
        """Delete the checkpoint this callback wrote (the job ended well)."""
        if self.completed is not None:
            self.path.unlink(missing_ok=True)


class InterruptAtBatchEnd(keras.callbacks.Callback):
    """Ctrl-C during training stops it at the end of the current batch, as `KeyboardInterrupt`.

    Python raises `KeyboardInterrupt` wherever the main thread is, and inside
    TensorFlow (tracing the train function, converting a tensor) it may be
    swallowed, so training goes on, or turn into another error. Used as a
    context manager around `fit`, this callback only notes Ctrl-C and raises
    it between two batches (or when the block ends). A second Ctrl-C ends
    the process at once, by the signal itself, as Ctrl-C does without Python
    (raised inside TensorFlow it could become another error). Where Ctrl-C
    is ignored (a background job) or handled by someone else, nothing changes.

    Example:
        >>> with InterruptAtBatchEnd() as interrupt:  # doctest: +SKIP
        ...     model.fit(x, y, callbacks=[interrupt])
    """

    def __init__(self):
        super().__init__()
        self._held = HeldCtrlC(kill_on_second=True)

    def __enter__(self):
        self._held.__enter__()
        return self

    def __exit__(self, kind, value, traceback):
        return self._held.__exit__(kind, value, traceback)

    def _check(self):
        if self._held.pressed:
            _end_progress_line(self)
            raise KeyboardInterrupt

    def on_train_batch_end(self, batch, logs=None):
        self._check()

    def on_test_batch_end(self, batch, logs=None):
        self._check()

    def on_epoch_end(self, epoch, logs=None):
        self._check()
