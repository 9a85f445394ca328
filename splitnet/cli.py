"""The `splitnet` command: a thin shell over the library.

This is the only place where exceptions become messages and exit codes:
0 success, 2 a bad spec, bad arguments or bad input files, 1 anything else,
130 interrupted (Ctrl-C). Errors are one line on stderr, never a traceback.

Only click and splitnet's light modules are imported here: TensorFlow (and
the library, which needs it) is imported by each command's body, so `--help`,
`--version` and usage errors answer at once.
"""

from __future__ import annotations

import json
import math
import signal
import sys

import click

from splitnet import __version__
from splitnet._startup import HeldCtrlC, invoked_as_command, quiet_tensorflow_import
from splitnet.distribute import STRATEGIES
from splitnet.errors import InputError

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _one_line(exc):
    """The line of an exception's message that says what went wrong."""
    text = str(getattr(exc, "message", None) or exc)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("[[")]
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(exc, tf.errors.OpError) and lines:
        return lines[-1]  # TensorFlow puts the op's traceback first and the reason last
    return lines[0] if lines else type(exc).__name__


def _with_hint(message, exc):
    """Add where a stopped job left its progress (`EpochCheckpoint.resume_hint`)."""
    hint = getattr(exc, "resume_hint", "")
    return f"{message}; {hint}" if hint else message


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return self._invoke(ctx)
        finally:
            # The command has finished and said so; TensorFlow's shutdown takes a
            # moment, and a Ctrl-C then would only kill the process without a word.
            if invoked_as_command():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.UsageError as exc:  # bad arguments: one line, not click's usage block
            command = exc.ctx.command_path if exc.ctx else "splitnet"
            click.echo(f"splitnet: error: {exc.format_message()} (see '{command} --help')", err=True)
            ctx.exit(EXIT_USAGE)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as exc:
            click.echo(_with_hint("splitnet: interrupted", exc), err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
            usage = isinstance(exc, InputError)
            message = _one_line(exc)
            if not usage and not message.startswith(type(exc).__name__):
                message = f"{type(exc).__name__}: {message}"
            click.echo(_with_hint(f"splitnet: error: {message}", exc), err=True)
            ctx.exit(EXIT_USAGE if usage else EXIT_FAILURE)


@click.group(name="splitnet", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="splitnet")
def main():
    """Freeze chosen units or input rows of Keras layers (Dense, Conv, EinsumDense, Embedding), exactly.

    \b
    Example:
      splitnet run configs/quickstart.yaml
    """


def _library():
    """Import TensorFlow (quietly) and the library: the commands' first step."""
    with HeldCtrlC():  # a Ctrl-C during the import is raised once it is done
        quiet_tensorflow_import()
        import splitnet

        splitnet.import_all()
    return splitnet


def _finite(ctx, param, value):
    """click's FloatRange lets nan and inf through; a learning rate must be a real number."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


_learning_rate = click.option(
    "--learning-rate", type=click.FloatRange(min=0, min_open=True), callback=_finite, help="Override the learning rate."
)
_input = click.argument("input_path", metavar="MODEL.keras|SPEC", type=click.Path(exists=True, dir_okay=False))
_keras_in = click.argument("input_path", metavar="IN.keras", type=click.Path(exists=True, dir_okay=False))
_force = click.option("--force", is_flag=True, help="Overwrite an existing output.")


_form = click.option(
    "--form",
    type=click.Choice(["auto", "functional", "in_place"]),
    help="How split layers are made (overrides the spec's form): functional = a nested model of plain Keras "
    "pieces, loadable without splitnet; in_place = the layer keeps its class; auto = functional where it applies.",
)
_keras_out = click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .keras file to write.")


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(exists=True, dir_okay=False))
@_keras_out
@_form
@_force
def build(spec_path, output, form, force):
    """Build the split model of SPEC, compile it with the spec's train settings, save it.

    The file also holds the spec's data, epochs, batch size and seed, so
    `splitnet train OUTPUT` trains as the spec says.

    \b
    Example:
      splitnet build configs/quickstart.yaml -o split.keras
    """
    _library()
    from splitnet.files import check_output, save_keras
    from splitnet.job import model_from
    from splitnet.summary import describe
    from splitnet.train import for_file, settings_dict

    check_output(output, force, suffix=".keras")
    model, settings, _ = model_from(spec_path, form=form)
    save_keras(model, output, force, settings=for_file(settings_dict(settings), output))
    info = describe(model)
    click.echo(f"wrote {output}: {info['frozen']:,} of {info['params']:,} weight entries frozen")


@main.command()
@_input
@click.option("--data", type=click.Path(exists=True, dir_okay=False), help=".npz with x, y (optional x_val, y_val); default: the model's or spec's, else the synthetic task.")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs in all (default: the model's or spec's, else 5); a checkpoint counts those it has.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size (default: the model's or spec's, else 64).")
@_learning_rate
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default="none",
    show_default=True,
    help="tf.distribute strategy: mirrored (local devices) or multiworker (TF_CONFIG).",
)
@_keras_out
@_force
def train(input_path, data, epochs, batch_size, learning_rate, strategy, output, force):
    """Train a split model with model.fit and save it.

    MODEL.keras is a model saved by `splitnet build`, `train` or `run`: it
    trains with the settings stored in it (the spec's data, epochs, batch
    size) and resumes its optimizer state; SPEC builds a fresh model. It
    prints what it trains on first. After each epoch the model is saved to
    OUTPUT's `NAME.checkpoint.keras`, removed when training ends well; if
    training stops early, `splitnet train NAME.checkpoint.keras` resumes at
    the next epoch. --batch-size is the global batch, split across
    replicas. With multiworker, run the same command on every worker, each
    with its TF_CONFIG; each writes its own -o.

    \b
    Example:
      splitnet train split.keras --epochs 3 -o trained.keras
      splitnet train split.keras --strategy mirrored -o trained.keras
    """
    _library()
    from splitnet import distribute
    from splitnet.job import train_file

    strategy = distribute.make_strategy(strategy)  # first: multiworker must start before other TF work
    train_file(
        input_path, output, force=force, data=data, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, strategy=strategy, echo=click.echo,
    )
    click.echo(f"wrote {output}")


@main.command()
@_keras_in
@_keras_out
@_force
def merge(input_path, output, force):
    """Merge every split layer of IN.keras back into its plain layer and save it.

    \b
    Example:
      splitnet merge trained.keras -o merged.keras
    """
    splitnet = _library()
    from splitnet.files import check_output, load_keras, save_keras

    check_output(output, force, suffix=".keras")
    merged = splitnet.merge_model(load_keras(input_path))
    save_keras(merged, output, force)
    click.echo(f"wrote {output}")


@main.command()
@_keras_in
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="The SavedModel folder to create.")
@_force
def export(input_path, output, force):
    """Merge IN.keras and export it as a TensorFlow SavedModel (checked after reload).

    \b
    Example:
      splitnet export trained.keras -o exported/
    """
    splitnet = _library()
    from splitnet.files import check_output, load_keras

    check_output(output, force)
    _, diff = splitnet.export_saved_model(load_keras(input_path, compile=False), output, force=force)
    click.echo(f"wrote {output} (reloaded; max |difference| to the merged model {diff:.3g})")


@main.command()
@_input
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Draw each frozen kernel's map into a PNG (needs matplotlib).")
@_force
def inspect(input_path, as_json, plot, force):
    """Show per splittable layer (with its path) what is frozen, counts and the optimizer state saved.

    \b
    Example:
      splitnet inspect configs/quickstart.yaml
      splitnet inspect trained.keras --json
    """
    _library()
    from splitnet.files import atomic_output, check_output
    from splitnet.job import model_from
    from splitnet.summary import describe, format_table, plot_masks

    if plot:
        check_output(plot, force)
    model, _, _ = model_from(input_path, need_data=False)
    info = describe(model)
    click.echo(json.dumps(info, indent=2) if as_json else format_table(info))
    if plot:
        with atomic_output(plot, force) as tmp:
            plot_masks(model, tmp)
        if not as_json:
            click.echo(f"wrote {plot}")


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Folder to create for the results (default: runs/NAME-TIME).")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), help="Override train.data (.npz).")
@click.option("--epochs", type=click.IntRange(min=1), help="Override train.epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override train.batch_size.")
@_learning_rate
@_form
@_force
def run(spec_path, output, data, epochs, batch_size, learning_rate, form, force):
    """The whole job: build, train, check the frozen entries, merge, export, report.

    \b
    Writes OUTPUT/saved_model (the export), OUTPUT/split.keras (the trained
    split model), OUTPUT/spec.yaml and OUTPUT/report.json. OUTPUT is
    created at the start (a taken name is refused before any work); the
    default runs/NAME-TIME gets -2, -3, ... if taken. After each epoch the
    model is saved to OUTPUT/checkpoint.keras; if the run stops early, that
    is all OUTPUT holds, and `splitnet train` resumes from it.

    \b
    Example:
      splitnet run configs/quickstart.yaml -o runs/quickstart
    """
    _library()
    from splitnet.job import format_report, run_spec

    report = run_spec(
        spec_path, output, force=force, data=data, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, echo=click.echo, form=form,
    )
    click.echo(format_report(report))


@main.command()
@click.argument("before", metavar="BEFORE.keras", type=click.Path(exists=True, dir_okay=False))
@click.argument("after", metavar="AFTER.keras", type=click.Path(exists=True, dir_okay=False))
def verify(before, after):
    """Check that every frozen entry of AFTER equals BEFORE, bit for bit.

    The frozen masks come from the split model (BEFORE, or AFTER if only
    it is split), so AFTER may be split or merged. AFTER may also be BEFORE
    grown (a `grow:` spec): the old entries are checked, the new counted. Exits 0 when all
    frozen entries are intact, 1 listing the first changed ones otherwise.
    Also counts how many of the model's trainable entries (in every layer)
    training moved.

    \b
    Example:
      splitnet verify split.keras trained.keras
      splitnet verify split.keras merged.keras
      splitnet verify base.keras runs/grown/split.keras
    """
    splitnet = _library()
    from splitnet.files import load_keras

    check = splitnet.verify(load_keras(before, compile=False), load_keras(after, compile=False))
    if check.changed:
        click.echo(
            f"FAILED: {check.changed:,} of {check.frozen:,} frozen entries changed; first: {check.describe_first()}"
        )
        raise SystemExit(EXIT_FAILURE)
    layers = "layer" if len(check.grown) == 1 else "layers"
    grown = f"; {check.new:,} new entries in the grown {layers} {', '.join(check.grown)}" if check.grown else ""
    moved = f"; {check.moved:,} of {check.trainable:,} trainable entries moved" if check.trainable or not grown else ""
    click.echo(f"OK: all {check.frozen:,} frozen entries are bit-identical{moved}{grown}")


if __name__ == "__main__":  # pragma: no cover
    main()
