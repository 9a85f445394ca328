"""The jobs behind the commands that train: `splitnet run` and `splitnet train`.

`run_spec` builds, trains, checks, merges, exports and reports;
`train_file` trains a saved model (or a spec's) and saves it. Both say what
they train on, keep a checkpoint after every epoch, stop cleanly on Ctrl-C
or a diverging loss, and find every problem with their inputs and outputs
before training starts. The commands only print what these return, so the
same jobs can be driven from Python.
"""

from __future__ import annotations

import dataclasses

import datetime
import json
from pathlib import Path

import keras

from splitnet import spec as spec_lib
from splitnet import summary
from splitnet.callbacks import EpochCheckpoint, InterruptAtBatchEnd, StopOnNonFiniteLoss
from splitnet.errors import InputError, SplitnetError
from splitnet.export import export_saved_model, max_difference, probe_inputs
from splitnet.files import (
    ModelFileError,
    OutputError,
    atomic_output,
    check_output,
    claimed_file,
    claimed_folder,
    load_keras,
    read_settings,
    save_keras,
)
from splitnet.split import build_model
from splitnet.train import DataError, compile_model, for_file, get_data, set_learning_rate, settings_dict, settings_from
from splitnet.verify import compare, snapshot


class FrozenEntriesChanged(SplitnetError):
    """Frozen entries changed during training: a splitnet bug, never expected."""


def default_run_dir(spec):
    """`runs/<model name>-<UTC time>` under the working directory (`-2`, `-3`, ... appended if taken)."""
    name = spec.model.name if spec.model is not None else Path(spec.base).stem
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def build_compiled(spec, learning_rate=None):
    """The spec's split model, seeded by `train.seed` and compiled with its `train` settings."""
    spec = spec_lib.load_spec(spec)
    keras.utils.set_random_seed(spec.train.seed)
    return compile_model(build_model(spec), spec.train, learning_rate)


def check_data(spec, data=None):
    """Refuse a spec whose `train.data` file is missing (unless `data` overrides it)."""
    if data is None and spec.train.data is not None and not Path(spec.train.data).is_file():
        raise spec.where.error(("train", "data"), f"{spec.train.data}: file not found")


def is_spec(path):
    return Path(path).suffix.lower() in (".yaml", ".yml")


def with_form(spec, form):
    """`spec` with its `form` replaced by `form` (a command-line override), if given."""
    return spec if form is None else dataclasses.replace(spec, form=form)


def model_from(path, learning_rate=None, data=None, need_data=True, form=None):
    """A compiled model, its train settings and the epochs it already has.

    From a spec (`.yaml`): built and compiled with its `train` settings (its
    data file must exist, if `need_data`, unless `data` overrides it). From a `.keras` file:
    loaded with the train settings stored in it by `build`, `train` or `run`
    (defaults for a file from elsewhere), and, for a checkpoint, the epochs
    it completed.

    Returns:
        `(model, TrainSpec, completed_epochs)`.
    """
    if is_spec(path):
        spec = with_form(spec_lib.load_spec(path), form)
        if need_data:
            check_data(spec, data)
        return build_compiled(spec, learning_rate), spec.train, 0
    if Path(path).suffix != ".keras":
        raise ModelFileError(f"{path}: expected a spec (.yaml) or a Keras model (.keras)")
    model = load_keras(path)
    if learning_rate is not None and model.optimizer is not None:
        set_learning_rate(model, learning_rate)
    settings, completed = settings_from(read_settings(path), path)
    return model, settings, completed


def checkpoint_path(output):
    """Where `train_file(..., output)` keeps its per-epoch checkpoint: `NAME.checkpoint.keras`."""
    output = Path(output)
    return output.with_name(f"{output.stem}.checkpoint.keras")


def _epochs(n):
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def train_file(
    source,
    output,
    *,
    force=False,
    data=None,
    epochs=None,
    batch_size=None,
    learning_rate=None,
    strategy=None,
    echo=print,
):
    """Train a saved split model (or a spec's) with `model.fit` and save it: `splitnet train`.

    The model trains with the settings stored in it (its spec's data, epochs
    and batch size) unless overridden, and resumes its optimizer state.
    After each epoch it is saved to `checkpoint_path(output)`, removed when
    training ends well; given that checkpoint as `source`, training resumes
    at the next epoch (`epochs` counts those it has). `output` is held
    against other jobs from the start.

    Args:
        source: A `.keras` model or a spec (`.yaml`).
        output: The `.keras` file to write.
        force: Replace an existing `output` (and an old checkpoint).
        data, epochs, batch_size, learning_rate: Override the stored settings.
        strategy: A `tf.distribute.Strategy` (default: none); see `distribute.fit`.
        echo: Called with the line saying what the model trains on.

    Raises:
        InputError: a bad input or output, before training; a stopped run
            carries `resume_hint`, saying where its checkpoint is.

    Example:
        >>> train_file("split.keras", "trained.keras", epochs=3)  # doctest: +SKIP
    """
    from splitnet import distribute

    output = check_output(output, force, suffix=".keras")
    with claimed_file(output):
        checkpoint_file = checkpoint_path(output)
        resuming = checkpoint_file.exists() and checkpoint_file.resolve() == Path(source).resolve()
        if checkpoint_file.exists() and not (force or resuming):
            raise OutputError(
                f"{checkpoint_file} exists (a stopped run's checkpoint); resume from it with "
                f"`splitnet train {checkpoint_file} -o {output}`, or overwrite it with --force"
            )
        strategy = strategy or distribute.make_strategy("none")
        # Until training moves on, a resumed checkpoint is the one to point to.
        checkpoint = EpochCheckpoint(checkpoint_file, (resuming and read_settings(checkpoint_file)) or {}, output)
        checkpoint.completed = checkpoint.settings.get("completed_epochs")
        try:
            with strategy.scope():
                model, settings, completed = model_from(source, learning_rate, data)
            if model.optimizer is None:
                raise ModelFileError(f"{source} was saved without a compile config; train from its spec instead")
            stored = settings_dict(settings, data, epochs, batch_size)
            checkpoint.settings = stored
            total = stored["epochs"]
            if completed > total:
                raise InputError(f"{source} has completed {_epochs(completed)}; --epochs {total} is fewer")
            if completed < total:
                if stored["data"] is not None and not Path(stored["data"]).is_file():
                    raise DataError(
                        f"{source} trains on {settings.data} (from its spec), which does not exist there "
                        "nor where it was when the model was saved; give --data"
                    )
                dataset = get_data(model, settings.data if data is None else data, seed=stored["seed"])
                todo = f"epochs {completed + 1}-{total} of {total}" if completed else _epochs(total)
                echo(f"training on {dataset.describe()}; {todo}, batch size {stored['batch_size']}")
                with InterruptAtBatchEnd() as interrupt:
                    distribute.fit(
                        model, strategy, dataset, total, stored["batch_size"], echo,
                        callbacks=[StopOnNonFiniteLoss(), checkpoint, interrupt], initial_epoch=completed,
                    )
            else:
                echo(f"nothing left to train: {source} has completed all {_epochs(total)}")
            save_keras(model, output, force, settings=for_file(stored, output))
        except BaseException as exc:
            exc.resume_hint = checkpoint.resume_hint()
            raise
        checkpoint.remove()
    return output


def run_spec(
    spec,
    out_dir=None,
    *,
    force=False,
    data=None,
    epochs=None,
    batch_size=None,
    learning_rate=None,
    verbose="auto",
    echo=None,
    form=None,
):
    """Build the spec's split model, train it, check it, merge it and export it.

    The output folder is claimed (created, empty) before anything else, so
    a name that is taken is refused at once, and two runs never share one.
    After every epoch the model is saved to `OUT/checkpoint.keras`; if the
    run stops early (an error, Ctrl-C) the folder keeps only that file,
    which `splitnet train` resumes from, and the exception carries a
    `resume_hint` saying so. When the run ends well the checkpoint is gone
    and the folder holds the results.

    Args:
        spec: A `Spec`, a path to a YAML spec, or a mapping.
        out_dir: Folder to create for the results (default: `default_run_dir`).
        force: Replace an existing `out_dir`.
        data: An `.npz` path overriding `train.data`.
        epochs, batch_size, learning_rate: Override the spec's `train` settings.
        verbose: Passed to `model.fit` (Keras' progress bar by default).
        echo: If given, called with a line saying what the model trains on,
            before the first epoch.
        form: Override the spec's `form` ("auto", "functional", "in_place").

    Returns:
        The report (also written as `report.json`): entry counts, whether the
        frozen entries are bit-identical, loss before and after, the largest
        split-vs-merged output difference, what grew (`grown`, for a
        `grow:` spec), and where the results are. The
        folder holds `saved_model/` (the export), `split.keras` (the trained
        split model, for `splitnet train` to resume) and `spec.yaml`.

    Raises:
        SpecError, OutputError, DataError: bad input; nothing is written.
        TrainingDiverged: the loss became NaN or infinite.
        FrozenEntriesChanged: a frozen entry moved (never expected).

    Example:
        >>> report = run_spec("configs/quickstart.yaml", "runs/demo")  # doctest: +SKIP
        >>> report["frozen_changed"]  # doctest: +SKIP
        0
    """
    spec = with_form(spec_lib.load_spec(spec), form)
    if out_dir is None:
        claim = claimed_folder(default_run_dir(spec), unique=True)
    else:
        claim = claimed_folder(out_dir, force)
    with claim as out_dir:
        return _run(spec, out_dir, data, epochs, batch_size, learning_rate, verbose, echo)


def _run(spec, out_dir, data, epochs, batch_size, learning_rate, verbose, echo):
    check_data(spec, data)
    model = build_compiled(spec, learning_rate)
    dataset = get_data(model, data or spec.train.data, seed=spec.train.seed)
    settings = settings_dict(spec.train, data, epochs, batch_size)
    epochs, batch_size = settings["epochs"], settings["batch_size"]
    if echo is not None:
        echo(f"training on {dataset.describe()}; {_epochs(epochs)}, batch size {batch_size}")

    checkpoint = EpochCheckpoint(out_dir / "checkpoint.keras", settings, "trained.keras")
    try:
        with InterruptAtBatchEnd() as interrupt:
            before = snapshot(model)
            evaluate = dict(batch_size=batch_size, verbose=0, callbacks=[interrupt])
            loss_before = _loss(model.evaluate(dataset.x, dataset.y, **evaluate))
            model.fit(
                dataset.x,
                dataset.y,
                validation_data=dataset.validation,
                epochs=epochs,
                batch_size=batch_size,
                verbose=verbose,
                callbacks=[StopOnNonFiniteLoss(), checkpoint, interrupt],
            )
            loss_after = _loss(model.evaluate(dataset.x, dataset.y, **evaluate))
        check = compare(before, snapshot(model))
        if check.changed:
            raise FrozenEntriesChanged(
                f"{check.changed} frozen entries changed during training (first: {check.describe_first()})"
            )
        report = _finish(spec, model, out_dir, settings, check, loss_before, loss_after)
    except BaseException as exc:
        exc.resume_hint = checkpoint.resume_hint()
        raise
    return report


def _finish(spec, model, out_dir, settings, check, loss_before, loss_after):
    """Merge, export and write the run folder in one step (it replaces the claimed folder)."""
    with atomic_output(out_dir, force=True, directory=True) as tmp:  # the folder is ours: claimed
        merged, export_diff = export_saved_model(model, tmp / "saved_model")
        probe = probe_inputs(model, batch=256)
        split_vs_merged = max_difference(model(probe, training=False), merged(probe, training=False))
        save_keras(model, tmp / "split.keras", settings=for_file(settings, out_dir / "split.keras"))
        report = {
            "spec": spec.source,
            "model": model.name,
            "frozen_entries": check.frozen,
            "frozen_changed": check.changed,
            "trainable_entries": check.trainable,
            "trainable_moved": check.moved,
            "epochs": settings["epochs"],
            "loss_before": loss_before,
            "loss_after": loss_after,
            "max_split_vs_merged": split_vs_merged,
            "max_export_vs_merged": export_diff,
            "output": str(out_dir),
            "saved_model": str(out_dir / "saved_model"),
            "split_model": str(out_dir / "split.keras"),
            "grown": summary.grown(model),
            "forms": summary.forms(model),
        }
        if spec.source is not None:
            (tmp / "spec.yaml").write_text(Path(spec.source).read_text(encoding="utf-8"), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def _loss(result):
    return float(result[0] if isinstance(result, (list, tuple)) else result)


def format_report(report):
    """The report as the few lines `splitnet run` prints."""
    moved_share = report["trainable_moved"] / report["trainable_entries"] if report["trainable_entries"] else 0.0
    grown = "; ".join(f"{layer} {what}" for layer, what in report.get("grown", {}).items())
    functional = [layer for layer, form in report.get("forms", {}).items() if form == "functional"]
    return "\n".join(
        ([f"grown:            {grown}"] if grown else [])
        + ([f"functional form:  {', '.join(functional)} (nested models of plain Keras pieces)"] if functional else [])
        + [
            f"frozen entries:   {report['frozen_entries']:,}, all bit-identical after training (checked)",
            f"trainable moved:  {report['trainable_moved']:,} of {report['trainable_entries']:,} ({moved_share:.1%})",
            f"loss:             {report['loss_before']:.4f} -> {report['loss_after']:.4f} ({report['epochs']} epochs)",
            f"split vs merged:  max |difference| {report['max_split_vs_merged']:.3g} on 256 probe rows",
            f"export:           {report['saved_model']} (SavedModel, reloaded and checked)",
            f"split model:      {report['split_model']} (resume with `splitnet train`)",
        ]
    )
