"""The main job, `splitnet run`: build, train, check, merge, export, report.

Everything the command prints comes from `run_spec`'s report, so the same
job can be driven from Python.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import keras

from splitnet import spec as spec_lib
from splitnet.errors import SplitnetError
from splitnet.export import export_saved_model, max_difference, probe_inputs
from splitnet.files import atomic_output, claimed_folder, save_keras
from splitnet.split import build_model
from splitnet.verify import compare, snapshot
from splitnet.train import EpochCheckpoint, StopOnNonFiniteLoss, compile_model, get_data, settings_dict


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

    Returns:
        The report (also written as `report.json`): entry counts, whether the
        frozen entries are bit-identical, loss before and after, the largest
        split-vs-merged output difference, and where the results are. The
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
    spec = spec_lib.load_spec(spec)
    if out_dir is None:
        claim = claimed_folder(default_run_dir(spec), unique=True)
    else:
        claim = claimed_folder(out_dir, force)
    with claim as out_dir:
        return _run(spec, out_dir, data, epochs, batch_size, learning_rate, verbose, echo)


def _run(spec, out_dir, data, epochs, batch_size, learning_rate, verbose, echo):
    train = spec.train
    model = build_compiled(spec, learning_rate)
    dataset = get_data(model, data or train.data, seed=train.seed)
    settings = settings_dict(train, data, epochs, batch_size)
    epochs, batch_size = settings["epochs"], settings["batch_size"]
    if echo is not None:
        echo(f"training on {dataset.describe()}; {epochs} epochs, batch size {batch_size}")

    before = snapshot(model)
    loss_before = _loss(model.evaluate(dataset.x, dataset.y, batch_size=batch_size, verbose=0))
    checkpoint = EpochCheckpoint(out_dir / "checkpoint.keras", settings)
    try:
        model.fit(
            dataset.x,
            dataset.y,
            validation_data=dataset.validation,
            epochs=epochs,
            batch_size=batch_size,
            verbose=verbose,
            callbacks=[StopOnNonFiniteLoss(), checkpoint],
        )
    except BaseException as exc:
        exc.resume_hint = checkpoint.resume_hint()
        raise
    loss_after = _loss(model.evaluate(dataset.x, dataset.y, batch_size=batch_size, verbose=0))
    check = compare(before, snapshot(model))
    if check.changed:
        raise FrozenEntriesChanged(f"{check.changed} frozen entries changed during training (first: {check.describe_first()})")

    with atomic_output(out_dir, force=True, directory=True) as tmp:  # the folder is ours: claimed above
        merged, export_diff = export_saved_model(model, tmp / "saved_model")
        probe = probe_inputs(model, batch=256)
        split_vs_merged = max_difference(model(probe, training=False), merged(probe, training=False))
        save_keras(model, tmp / "split.keras", settings=settings)
        report = {
            "spec": spec.source,
            "model": model.name,
            "frozen_entries": check.frozen,
            "frozen_changed": check.changed,
            "trainable_entries": check.trainable,
            "trainable_moved": check.moved,
            "epochs": epochs,
            "loss_before": loss_before,
            "loss_after": loss_after,
            "max_split_vs_merged": split_vs_merged,
            "max_export_vs_merged": export_diff,
            "output": str(out_dir),
            "saved_model": str(out_dir / "saved_model"),
            "split_model": str(out_dir / "split.keras"),
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
    return "\n".join(
        [
            f"frozen entries:   {report['frozen_entries']:,}, all bit-identical after training (checked)",
            f"trainable moved:  {report['trainable_moved']:,} of {report['trainable_entries']:,} ({moved_share:.1%})",
            f"loss:             {report['loss_before']:.4f} -> {report['loss_after']:.4f} ({report['epochs']} epochs)",
            f"split vs merged:  max |difference| {report['max_split_vs_merged']:.3g} on 256 probe rows",
            f"export:           {report['saved_model']} (SavedModel, reloaded and checked)",
            f"split model:      {report['split_model']} (resume with `splitnet train`)",
        ]
    )
