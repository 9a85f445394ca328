"""The catalogue of wrong inputs, through the real command line.

Every case must give the documented exit code and exactly one line on stderr
that says where (FILE:LINE: key.path where there is one) and what, never a
traceback, write nothing, and leave an existing output untouched even with
--force.
"""

import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from splitnet.cli import main

SPEC = """\
model:
  name: net
  input_shape: [32]
  layers:
    - {type: Dense, name: hidden, units: 64, activation: relu}
    - {type: Dropout, name: drop, rate: 0.1}
    - {type: Dense, name: head, units: 10, activation: softmax}
freeze:
  hidden:
    units: [0, 1, "8:16", -1]
  head:
    rows: "0:32"
train:
  loss: sparse_categorical_crossentropy
  optimizer: {name: adamw, learning_rate: 0.001}
  epochs: 1
"""


def edit(old, new):
    assert old in SPEC, old
    return SPEC.replace(old, new, 1)


# (id, spec text, expected "LINE: key.path: message" after the spec's path)
SPEC_CASES = [
    ("yaml-syntax", edit('units: [0, 1, "8:16", -1]', "units: [0, 1"), "11: YAML error: expected ',' or ']'"),
    ("python-tag", edit("name: net", "name: !!python/object/apply:os.system [ls]"), "2: YAML error: could not determine a constructor"),
    ("duplicate-key", edit("  head:\n", "  hidden:\n"), "11: freeze.hidden: duplicate key 'hidden'"),
    ("wrong-type-index", edit('units: [0, 1, "8:16", -1]', "units: [0, 1.5]"), "10: freeze.hidden.units[1]: 1.5 is not an index"),
    ("wrong-type-freeze", edit('freeze:\n  hidden:\n    units: [0, 1, "8:16", -1]\n  head:\n    rows: "0:32"\n', "freeze: [hidden, head]\n"), "8: freeze: expected a mapping of layer name"),
    ("wrong-type-bias", edit('rows: "0:32"', 'rows: "0:32"\n    bias: "no"'), "13: freeze.head.bias: expected true or false"),
    ("unknown-top-key", edit("train:", "trian:"), "13: trian: unknown key 'trian'; did you mean 'train'?"),
    ("unknown-freeze-key", edit('units: [0, 1, "8:16", -1]', "unit: [0]"), "10: freeze.hidden.unit: unknown key 'unit'; did you mean 'units'?"),
    ("unknown-train-key", edit("  epochs: 1", "  epoch: 1"), "16: train.epoch: unknown key 'epoch'; did you mean 'epochs'?"),
    ("unknown-layer-arg", edit("units: 64, activation", "units: 64, activaton"), "5: model.layers[0].activaton: Dense has no argument 'activaton'; did you mean 'activation'?"),
    ("misspelled-layer", edit("  hidden:\n", "  hiden:\n"), "9: freeze.hiden: no layer 'hiden' in model 'net'; did you mean 'hidden'?"),
    ("layer-not-in-model", edit("  head:\n", "  output:\n"), "11: freeze.output: no layer 'output' in model 'net'"),
    ("non-dense", edit("  head:\n", "  drop:\n"), "11: freeze.drop: layer 'drop' is of type Dropout; splitnet splits Dense, EinsumDense, Conv1D, Conv2D, Conv3D, Embedding, ReversibleEmbedding layers"),
    ("out-of-range", edit('"8:16", -1]', '"8:16", 64]'), "10: freeze.hidden.units[3]: 64 is out of range, layer 'hidden' has 64 units"),
    ("negative-out-of-range", edit('"8:16", -1]', '"8:16", -65]'), "10: freeze.hidden.units[3]: -65 is out of range, layer 'hidden' has 64 units"),
    ("range-out-of-range", edit('rows: "0:32"', 'rows: "0:65"'), "12: freeze.head.rows: range '0:65': 65 is out of range, layer 'head' has 64 input rows"),
    ("reversed-range", edit('"8:16"', '"16:8"'), "10: freeze.hidden.units[2]: range '16:8' is reversed (16 > 8)"),
    ("empty-range", edit('"8:16"', '"8:8"'), "10: freeze.hidden.units[2]: range '8:8' is empty"),
    ("empty-list", edit('units: [0, 1, "8:16", -1]', "units: []"), "10: freeze.hidden.units: empty list"),
    ("overlap", edit('units: [0, 1, "8:16", -1]', 'units: ["0:10", 8]'), "10: freeze.hidden.units[1]: '8' overlaps '0:10' (both include 8)"),
    ("overlap-negative", edit('units: [0, 1, "8:16", -1]', 'units: [63, -1]'), "10: freeze.hidden.units[1]: '-1' overlaps '63' (both include 63)"),
    ("nothing-to-freeze", edit('  head:\n    rows: "0:32"\n', "  head: {}\n"), "11: freeze.head: nothing to freeze"),
    ("model-and-base", edit("freeze:\n", "base: m.keras\nfreeze:\n"), "8: base: give exactly one of `model` (a layer stack) and `base`"),
    ("neither", SPEC[SPEC.index("freeze:"):], "1: give exactly one of `model` (a layer stack) and `base`"),
    ("unknown-layer-type", edit("type: Dropout", "type: DropOut"), "6: model.layers[1].type: 'DropOut' is not a Keras layer; did you mean 'Dropout'?"),
    ("lambda-layer", edit("{type: Dropout, name: drop, rate: 0.1}", "{type: Lambda, function: x}"), "6: model.layers[1].type: Lambda is not allowed here"),
    ("bad-layer-value", edit("units: 64,", "units: -3,"), "5: model.layers[0]: invalid Dense arguments"),
    ("bad-input-shape", edit("input_shape: [32]", "input_shape: [32.5]"), "3: model.input_shape[0]: expected a positive integer"),
    ("unknown-optimizer", edit("name: adamw,", "name: adamm,"), "15: train.optimizer: 'adamm' is not a Keras optimizer; did you mean"),
    ("unknown-loss", edit("loss: sparse_categorical_crossentropy", "loss: crossentropy"), "14: train.loss: 'crossentropy' is not a Keras loss"),
    ("zero-epochs", edit("epochs: 1", "epochs: 0"), "16: train.epochs: expected a positive integer, got 0"),
    ("constraint-on-rows", edit("name: head, units: 10,", "name: head, units: 10, kernel_constraint: max_norm,"), "12: freeze.head.rows: layer 'head' has a kernel_constraint (MaxNorm)"),
    ("missing-base", "base: nope.keras\nfreeze: {hidden: {units: [0]}}\n", "1: base: {tmp}/nope.keras: file not found"),
    ("base-not-keras", "base: text.keras\nfreeze: {hidden: {units: [0]}}\n", "1: base: {tmp}/text.keras: not a Keras archive"),
    ("base-truncated", "base: truncated.keras\nfreeze: {hidden: {units: [0]}}\n", "1: base: {tmp}/truncated.keras: not a Keras archive"),
    ("base-wrong-layer", "base: good.keras\nfreeze: {hiden: {units: [0]}}\n", "2: freeze.hiden: no layer 'hiden' in model 'net'; did you mean 'hidden'?"),
]


@pytest.fixture(scope="module")
def good_keras(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.keras"
    spec = tmp_path_factory.mktemp("spec") / "spec.yaml"
    spec.write_text(SPEC.replace("freeze:\n  hidden:", "freeze:\n  zzz:").split("freeze:")[0])  # no freeze: a plain model
    result = CliRunner().invoke(main, ["build", str(spec), "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def workdir(tmp_path, good_keras):
    """A folder with the inputs the cases refer to and a precious existing output."""
    (tmp_path / "text.keras").write_text("not a zip archive")
    data = good_keras.read_bytes()
    (tmp_path / "truncated.keras").write_bytes(data[: len(data) // 2])
    (tmp_path / "good.keras").write_bytes(data)
    with zipfile.ZipFile(good_keras) as archive:
        assert archive.testzip() is None
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "no-y.npz", x=rng.normal(size=(8, 32)).astype("float32"))
    np.savez(tmp_path / "shape.npz", x=rng.normal(size=(8, 31)).astype("float32"), y=np.zeros(8, int))
    np.savez(tmp_path / "labels.npz", x=rng.normal(size=(8, 32)).astype("float32"), y=np.arange(8) * 3)
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    x = rng.normal(size=(256, 32)).astype("float32")
    np.savez(tmp_path / "finite.npz", x=x, y=np.arange(256) % 10)  # 4 batches: the loss can diverge
    x = x[:64]
    x[3, 0], x[9, 5] = np.nan, -np.inf
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(64) % 10)
    np.savez(tmp_path / "nan-y.npz", x=np.zeros((8, 32), "float32"), y=np.array([0, 1, np.nan, 3, 4, 5, 6, 7]))
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "out.keras").write_text("precious")
    return tmp_path


def run(workdir, args, full=False):
    before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    result = CliRunner().invoke(main, [a.format(tmp=workdir) for a in args])
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    # Nothing written, nothing existing touched (out.keras survives --force).
    after = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    assert after == before
    assert sorted(p.name for p in workdir.iterdir()) == sorted(before)
    return (result.exit_code, lines[0], result) if full else (result.exit_code, lines[0])


@pytest.mark.parametrize("case_id, text, expected", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
@pytest.mark.parametrize("command", ["build", "run"])
def test_bad_spec(workdir, case_id, text, expected, command):
    spec = workdir / "case.yaml"
    spec.write_text(text)
    out = ["-o", "{tmp}/out.keras"] if command == "build" else ["-o", "{tmp}/run"]
    code, line = run(workdir, [command, str(spec), *out, "--force"])
    assert code == 2
    prefix = f"splitnet: error: {spec}:"
    assert line.startswith(prefix), line
    assert line[len(prefix):].startswith(expected.format(tmp=workdir)), line


# (id, args, exit code, message) for data, model files and arguments
OTHER_CASES = [
    ("npz-without-y", ["train", "{tmp}/spec.yaml", "--data", "{tmp}/no-y.npz"], 2, "no-y.npz: needs arrays x, y (has: x)"),
    ("data-shape", ["train", "{tmp}/spec.yaml", "--data", "{tmp}/shape.npz"], 2, "shape.npz: x has shape (8, 31), but model 'net' expects (n, 32)"),
    ("labels-range", ["train", "{tmp}/spec.yaml", "--data", "{tmp}/labels.npz"], 2, "labels.npz: class labels must be in [0, 10), got values from 0 to 21"),
    ("data-not-npz", ["train", "{tmp}/spec.yaml", "--data", "{tmp}/text.npz"], 2, "text.npz: not an .npz archive"),
    ("data-missing", ["train", "{tmp}/spec.yaml", "--data", "{tmp}/none.npz"], 2, "Invalid value for '--data': File '{tmp}/none.npz' does not exist"),
    ("model-not-keras", ["merge", "{tmp}/text.keras"], 2, "{tmp}/text.keras: not a Keras archive"),
    ("model-truncated", ["export", "{tmp}/truncated.keras"], 2, "{tmp}/truncated.keras: not a Keras archive"),
    ("model-is-spec", ["merge", "{tmp}/spec.yaml"], 2, "{tmp}/spec.yaml: expected a Keras model file (.keras)"),
    ("train-unknown-suffix", ["train", "{tmp}/text.npz"], 2, "{tmp}/text.npz: expected a spec (.yaml) or a Keras model (.keras)"),
    ("zero-epochs-option", ["train", "{tmp}/spec.yaml", "--epochs", "0"], 2, "Invalid value for '--epochs'"),
    ("bad-strategy", ["train", "{tmp}/spec.yaml", "--strategy", "tpu"], 2, "Invalid value for '--strategy'"),
    ("nan-data", ["train", "{tmp}/spec.yaml", "--data", "{tmp}/nan.npz"], 2, "nan.npz: x has 2 non-finite values (NaN or inf), the first in sample 3"),
    ("nan-labels", ["train", "{tmp}/spec.yaml", "--data", "{tmp}/nan-y.npz"], 2, "nan-y.npz: y has 1 non-finite value (NaN or inf), the first in sample 2"),
    ("nan-data-run", ["run", "{tmp}/spec.yaml", "--data", "{tmp}/nan.npz"], 2, "nan.npz: x has 2 non-finite values"),
    ("loss-diverges", ["train", "{tmp}/spec.yaml", "--data", "{tmp}/finite.npz", "--learning-rate", "1e35"], 1, "TrainingDiverged: the loss became nan in epoch 1 (batch "),
    ("loss-diverges-run", ["run", "{tmp}/spec.yaml", "--data", "{tmp}/finite.npz", "--learning-rate", "1e35"], 1, "TrainingDiverged: the loss became nan in epoch 1 (batch "),
    ("learning-rate-nan", ["train", "{tmp}/spec.yaml", "--learning-rate", "nan"], 2, "Invalid value for '--learning-rate': nan is not a finite number"),
    ("learning-rate-inf", ["run", "{tmp}/spec.yaml", "--learning-rate", "inf"], 2, "Invalid value for '--learning-rate': inf is not a finite number"),
    ("run-into-dot", ["run", "{tmp}/spec.yaml", "-o", ".", "--force"], 2, "cannot write to .: give the name of a new file or folder"),
    ("run-over-a-file", ["run", "{tmp}/spec.yaml", "-o", "{tmp}/out.keras", "--force"], 2, "Directory '{tmp}/out.keras' is a file"),
    ("output-under-a-file", ["build", "{tmp}/spec.yaml", "-o", "{tmp}/out.keras/x.keras"], 2, "folder {tmp}/out.keras is not a folder"),
    ("train-output-suffix", ["train", "{tmp}/spec.yaml", "-o", "{tmp}/out.h5"], 2, "{tmp}/out.h5: a Keras model file must be named NAME.keras"),
    ("train-read-only", ["train", "{tmp}/spec.yaml", "-o", "/proc/splitnet-test.keras"], 2, "cannot write in /proc:"),
    ("verify-plain-models", ["verify", "{tmp}/good.keras", "{tmp}/good.keras"], 2, "neither model records frozen entries"),
]


@pytest.mark.parametrize("case_id, args, code, expected", OTHER_CASES, ids=[c[0] for c in OTHER_CASES])
def test_bad_files_and_arguments(workdir, case_id, args, code, expected):
    if args[0] in ("train", "merge") and "-o" not in args:
        args = args + ["-o", "{tmp}/out.keras", "--force"]
    elif args[0] == "export":
        args = args + ["-o", "{tmp}/exported"]
    elif args[0] == "run" and "-o" not in args:
        args = args + ["-o", "{tmp}/run"]
    got, line, result = run(workdir, args, full=True)
    assert got == code
    assert expected.format(tmp=workdir) in line, line
    if not case_id.startswith("loss-diverges"):  # every other mistake is found before training starts
        assert "Epoch 1/" not in result.stdout


@pytest.mark.parametrize(
    "output, message",
    [
        ("{tmp}/out.keras", "{tmp}/out.keras already exists; overwrite it with --force"),
        ("{tmp}/missing/out.keras", "cannot write {tmp}/missing/out.keras: folder {tmp}/missing does not exist"),
        ("/proc/splitnet-test.keras", "cannot write in /proc:"),  # read-only, even for root
        ("{tmp}/out.h5", "{tmp}/out.h5: a Keras model file must be named NAME.keras"),
    ],
    ids=["exists", "missing-folder", "read-only-folder", "wrong-suffix"],
)
def test_bad_output_paths(workdir, output, message):
    code, line = run(workdir, ["build", "{tmp}/spec.yaml", "-o", output])
    assert code == 2
    assert message.format(tmp=workdir) in line, line
    assert not Path("/proc/splitnet-test.keras").exists()
