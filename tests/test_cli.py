"""The splitnet command, end to end: CliRunner for most, real subprocesses for some."""

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import is_split

import splitnet
from splitnet.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
COMMANDS = ["build", "train", "merge", "export", "inspect", "run"]


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def errors(result):
    """stderr lines of a failed command: exactly one, never a traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("built") / "split.keras"
    result = invoke("build", QUICKSTART, "-o", path)
    assert result.exit_code == 0, result.output
    return path


def test_version_and_help():
    assert invoke("--version").output.strip() == f"splitnet, version {splitnet.__version__}"
    for command in COMMANDS:
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example:" in result.output and f"splitnet {command}" in result.output


def test_build_saves_a_compiled_split_model(built):
    model = keras.saving.load_model(built)
    assert is_split(model.get_layer("hidden"))
    assert type(model.optimizer).__name__ == "AdamW" and model.optimizer.weight_decay == 0.01
    assert model.loss == "sparse_categorical_crossentropy"


def test_train_resumes_a_built_model_and_keeps_frozen_entries(built, tmp_path):
    out = tmp_path / "trained.keras"
    result = invoke("train", built, "--epochs", 1, "--batch-size", 128, "--learning-rate", 0.01, "-o", out)
    assert result.exit_code == 0, result.output
    assert "14/14" in result.output  # Keras progress bar: 1792 samples / 128
    before, after = keras.saving.load_model(built), keras.saving.load_model(out)
    assert float(after.optimizer.learning_rate) == pytest.approx(0.01)
    assert int(after.optimizer.iterations) == 14  # 1792 samples / 128: the optimizer state is saved
    masks = splitnet.frozen_masks(before)
    for name, mask in masks.items():
        old, new = splitnet.merged_weights(before)[name], splitnet.merged_weights(after)[name]
        np.testing.assert_array_equal(new[0][mask["kernel"]], old[0][mask["kernel"]])
        assert (new[0] != old[0])[~mask["kernel"]].all()


def test_train_from_spec_with_data_file(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.normal(size=(100, 32)).astype("float32"), y=rng.integers(0, 10, 100))
    out = tmp_path / "t.keras"
    result = invoke("train", QUICKSTART, "--data", data, "--epochs", 1, "-o", out)
    assert result.exit_code == 0, result.output
    assert "2/2" in result.output  # 100 samples, batch 64 from the spec


def test_merge_and_export(built, tmp_path):
    merged = tmp_path / "merged.keras"
    assert invoke("merge", built, "-o", merged).exit_code == 0
    model = keras.saving.load_model(merged)
    assert [type(layer).__name__ for layer in model.layers] == ["InputLayer", "Dense", "Dropout", "Dense"]
    out = tmp_path / "export"
    result = invoke("export", built, "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "saved_model.pb").is_file() and "reloaded" in result.output


def test_inspect_table_and_json(built):
    table = invoke("inspect", built)
    assert table.exit_code == 0
    assert "hidden  split  32x64  0:2, 8:16, 63" in table.output
    assert "optimizer state saved: 1,366 floats" in table.output
    info = json.loads(invoke("inspect", QUICKSTART, "--json").output)
    assert info["frozen"] == 683 and info["slots_per_entry"] == 2
    assert [row["layer"] for row in info["layers"]] == ["hidden", "head"]


def test_inspect_plot(built, tmp_path):
    png = tmp_path / "masks.png"
    result = invoke("inspect", built, "--plot", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG" and f"wrote {png}" in result.output


def test_inspect_plot_without_matplotlib(built, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    png = tmp_path / "masks.png"
    result = invoke("inspect", built, "--plot", png)
    assert result.exit_code == 1
    assert "--plot needs matplotlib: python -m pip install matplotlib" in errors(result)
    assert not png.exists() and list(tmp_path.iterdir()) == []


def test_run_writes_checked_results(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", QUICKSTART, "-o", out, "--epochs", 2)
    assert result.exit_code == 0, result.output
    assert "frozen entries:   683, all bit-identical after training (checked)" in result.output
    assert "trainable moved:  2,079 of 2,079" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["frozen_changed"] == 0 and report["loss_after"] < report["loss_before"]
    assert report["max_split_vs_merged"] < 1e-5
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "saved_model", "spec.yaml", "split.keras"]
    assert (out / "spec.yaml").read_text() == Path(QUICKSTART).read_text()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_runs(path, tmp_path, configs):
    result = invoke("run", configs / path.name, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["frozen_entries"] > 0 and report["frozen_changed"] == 0
    assert report["trainable_moved"] == report["trainable_entries"]
    assert report["loss_after"] < 0.9 * report["loss_before"]  # the synthetic task is learnable


def test_existing_output_is_not_overwritten(built, tmp_path):
    out = tmp_path / "exists.keras"
    out.write_text("precious")
    result = invoke("build", QUICKSTART, "-o", out)
    assert result.exit_code == 2
    assert errors(result) == f"splitnet: error: {out} already exists; overwrite it with --force (force=True in Python)"
    assert out.read_text() == "precious"
    assert invoke("build", QUICKSTART, "-o", out, "--force").exit_code == 0
    assert is_split(keras.saving.load_model(out).get_layer("head"))


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["build", "{bad}", "-o", "{tmp}/o.keras"], 2, "splitnet: error: {bad}:7: model.layers[1].type: 'Dropot' is not a Keras layer"),
        (["run", "{bad}", "-o", "{tmp}/run"], 2, "splitnet: error: {bad}:7:"),
        (["build", "{tmp}/missing.yaml", "-o", "{tmp}/o.keras"], 2, "does not exist"),
        (["build", QUICKSTART, "-o", "{tmp}/no/such/o.keras"], 2, "folder {tmp}/no/such does not exist"),
        (["build", QUICKSTART, "-o", "{tmp}/o.h5"], 2, "must be named NAME.keras"),
        (["merge", "{notkeras}", "-o", "{tmp}/o.keras"], 2, "{notkeras}: not a Keras archive"),
        (["merge", QUICKSTART, "-o", "{tmp}/o.keras"], 2, "expected a Keras model file (.keras)"),
        (["train", "{notkeras}", "-o", "{tmp}/o.keras"], 2, "not a Keras archive"),
        (["train", QUICKSTART, "--data", "{labels}", "-o", "{tmp}/o.keras"], 2, "class labels must be in [0, 10), got values from 5 to 12"),
        (["train", QUICKSTART, "--data", "{bad}", "-o", "{tmp}/o.keras"], 2, "not an .npz archive"),
        (["train", QUICKSTART], 2, "Missing option '-o' / '--output'. (see 'splitnet train --help')"),
        (["train", "{tmp}/missing.keras", "-o", "{tmp}/o.keras"], 2, "File '{tmp}/missing.keras' does not exist"),
        (["train", QUICKSTART, "--epochs", "0", "-o", "{tmp}/o.keras"], 2, "Invalid value for '--epochs'"),
        (["inspect", "{tmp}/x.txt"], 2, "expected a spec (.yaml) or a Keras model (.keras)"),
        (["train", QUICKSTART, "--data", "{baddata}", "-o", "{tmp}/o.keras"], 2, "needs arrays x, y"),
    ],
)
def test_errors_are_one_line_with_exit_codes(tmp_path, args, code, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(QUICKSTART).read_text().replace("type: Dropout", "type: Dropot"))
    notkeras = tmp_path / "m.keras"
    notkeras.write_text("not a zip")
    (tmp_path / "x.txt").write_text("")
    baddata = tmp_path / "d.npz"
    np.savez(baddata, a=np.zeros(3))
    labels = tmp_path / "labels.npz"
    np.savez(labels, x=np.zeros((8, 32), "float32"), y=np.arange(8) + 5)
    values = {"bad": bad, "tmp": tmp_path, "notkeras": notkeras, "baddata": baddata, "labels": labels}
    inputs = sorted(p.name for p in tmp_path.iterdir())
    result = invoke(*[a.format(**values) for a in args])
    assert result.exit_code == code, result.output
    assert message.format(**values) in errors(result)  # exactly one line
    # Nothing half-written: only the inputs this test made are there.
    assert sorted(p.name for p in tmp_path.iterdir()) == inputs


def _splitnet(*args, cwd):
    exe = Path(sys.executable).with_name("splitnet")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "splitnet.cli"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env)


def test_real_process_run_and_error(tmp_path):
    result = _splitnet("run", QUICKSTART, "--epochs", 1, "-o", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all bit-identical after training (checked)" in result.stdout
    assert "cuda" not in result.stderr.lower() and "Traceback" not in result.stderr
    assert (tmp_path / "out" / "saved_model" / "saved_model.pb").is_file()

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    result = _splitnet("run", bad, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"splitnet: error: {bad}:1: YAML error: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system' (specs are read with yaml.safe_load; "
        "Python tags are not allowed)"
    )
    assert "pwned" not in result.stdout


def test_verify_checks_frozen_entries_of_either_model(built, tmp_path):
    # BEFORE has a plain frozen Dense of its own; AFTER's split group was corrupted.
    before = keras.saving.load_model(built)
    after = keras.saving.load_model(built)
    kernel = next(v for v in after.get_layer("hidden").non_trainable_weights if len(v.shape) == 2)  # a frozen piece
    kernel.assign(kernel.numpy() + 1.0)
    merged_before = splitnet.merge_model(before)
    merged_before.get_layer("head").trainable = False
    merged_before.save(tmp_path / "before.keras")
    after.save(tmp_path / "after.keras")
    result = invoke("verify", tmp_path / "before.keras", tmp_path / "after.keras")
    assert result.exit_code == 1
    assert result.output.startswith("FAILED: 352 of ")


def test_inspect_lists_user_layers_with_double_underscore(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="my__head")(keras.layers.Dense(3, name="d")(inputs)))
    model.save(tmp_path / "m.keras")
    split = splitnet.split_model(model, {"d": {"units": [0]}})
    split.save(tmp_path / "s.keras")
    info = json.loads(invoke("inspect", tmp_path / "s.keras", "--json").output)
    assert [row["layer"] for row in info["layers"]] == ["d", "my__head"]


def test_runs_is_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("not a folder")
    result = invoke("run", QUICKSTART, "--epochs", 1)
    assert result.exit_code == 2
    assert errors(result) == "splitnet: error: runs exists but is not a folder; give the output folder with -o"


@keras.saving.register_keras_serializable(package="tests_cli")
class FeedForward(keras.layers.Layer):
    """A subclassed block whose Dense layers only its Python code calls."""

    def __init__(self, hidden, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.inner = keras.layers.Dense(hidden, activation="relu", name="inner")
        self.outer = keras.layers.Dense(6, name="outer")

    def build(self, input_shape):
        self.inner.build(input_shape)
        self.outer.build(tuple(input_shape[:-1]) + (self.hidden,))

    def call(self, x):
        return x + self.outer(self.inner(x))

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


def test_commands_on_a_layer_inside_a_layer(tmp_path):
    inputs = keras.Input((6,), name="x")
    h = FeedForward(16, name="block")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(h), name="blocky")
    model.save(tmp_path / "base.keras")
    spec = tmp_path / "spec.yaml"
    spec.write_text("base: base.keras\nfreeze:\n  block/inner: {units: '0:8'}\n  head: {units: [0]}\ntrain: {epochs: 2}\n")
    assert invoke("build", spec, "-o", tmp_path / "split.keras").exit_code == 0
    table = invoke("inspect", tmp_path / "split.keras")
    assert re.search(r"^block/inner +split +6x16 +0:8 ", table.output, re.M), table.output
    trained = invoke("train", tmp_path / "split.keras", "--epochs", 1, "-o", tmp_path / "trained.keras")
    assert trained.exit_code == 0, trained.output
    verified = invoke("verify", tmp_path / "split.keras", tmp_path / "trained.keras")
    assert verified.exit_code == 0 and verified.output.startswith("OK: all 63 frozen entries are bit-identical")
    assert invoke("merge", tmp_path / "trained.keras", "-o", tmp_path / "merged.keras").exit_code == 0
    merged = keras.saving.load_model(tmp_path / "merged.keras")
    assert type(merged.get_layer("block").inner) is keras.layers.Dense
    assert invoke("export", tmp_path / "trained.keras", "-o", tmp_path / "export").exit_code == 0
    report = invoke("run", spec, "-o", tmp_path / "run")
    assert report.exit_code == 0, report.output
    assert "all bit-identical after training (checked)" in report.output


def test_trainable_counts_cover_every_weight_that_trains(tmp_path):
    # One frozen row of a 20x5 head; the unsplit hidden Dense and the BatchNorm's gamma
    # and beta train too (8*20+20 + 2*20 + 20*5 = 320), the BatchNorm's moving
    # statistics do not and are not counted.
    inputs = keras.Input((8,))
    h = keras.layers.BatchNormalization(name="norm")(keras.layers.Dense(20, activation="tanh", name="hidden")(inputs))
    keras.Model(inputs, keras.layers.Dense(5, name="head")(h)).save(tmp_path / "base.keras")
    (tmp_path / "spec.yaml").write_text("base: base.keras\nfreeze:\n  head: {rows: 0}\ntrain: {loss: mse, epochs: 1}\n")
    assert invoke("build", tmp_path / "spec.yaml", "-o", tmp_path / "split.keras").exit_code == 0
    assert invoke("train", tmp_path / "split.keras", "-o", tmp_path / "trained.keras").exit_code == 0
    result = invoke("verify", tmp_path / "split.keras", tmp_path / "trained.keras")
    assert result.output.strip() == "OK: all 5 frozen entries are bit-identical; 320 of 320 trainable entries moved"
    from splitnet.job import run_spec

    report = run_spec(tmp_path / "spec.yaml", tmp_path / "run", verbose=0)
    assert (report["frozen_entries"], report["trainable_entries"], report["trainable_moved"]) == (5, 320, 320)


def test_verify_refuses_different_architectures(built, tmp_path):
    inputs = keras.Input((32,))
    keras.Model(inputs, keras.layers.Dense(10, name="head")(inputs)).save(tmp_path / "other.keras")
    result = invoke("verify", built, tmp_path / "other.keras")
    assert result.exit_code == 2
    assert "layer 'hidden' of BEFORE has no counterpart in the other model; are BEFORE and AFTER the same model?" in result.stderr


def _two_layers(order, names=("a", "b")):
    inputs = keras.Input((4,))
    first, second = keras.layers.Dense(4, name=names[0]), keras.layers.Dense(4, name=names[1])
    layers = [first, second] if order == "ab" else [second, first]
    model = keras.Model(inputs, layers[1](layers[0](inputs)))
    for layer, seed in zip((first, second), (1, 2)):
        layer.set_weights([np.full((4, 4), seed, "float32"), np.zeros(4, "float32")])
    return model


def test_verify_matches_layers_by_name_not_position(tmp_path):
    split = splitnet.split_model(_two_layers("ab"), {"a": {"units": [0]}, "b": {"units": [1]}})
    split.save(tmp_path / "ab.keras")
    _two_layers("ba").save(tmp_path / "ba.keras")  # the same layers and weights, called in the other order
    _two_layers("ab", names=("x", "y")).save(tmp_path / "renamed.keras")
    same = invoke("verify", tmp_path / "ab.keras", tmp_path / "ba.keras")
    assert same.exit_code == 0 and same.output.startswith("OK: all 10 frozen entries are bit-identical; 0 of 30"), same.output
    renamed = invoke("verify", tmp_path / "ab.keras", tmp_path / "renamed.keras")
    assert renamed.exit_code == 2 and "layer 'a' of BEFORE has no counterpart in the other model" in renamed.stderr


# --- growing a trained model from the command line --------------------------------------


@pytest.fixture(scope="module")
def grown_run(configs, tmp_path_factory):
    out = tmp_path_factory.mktemp("grown") / "run"
    result = invoke("run", configs / "new_inputs.yaml", "-o", out)
    assert result.exit_code == 0, result.output
    return configs.parent / "runs" / "sensors.keras", out


def test_inspect_shows_what_grew(configs):
    result = invoke("inspect", configs / "new_inputs.yaml")
    assert result.exit_code == 0, result.output
    header, encoder = result.output.splitlines()[:2]
    assert header.split()[-1] == "grown"
    assert encoder.split()[:5] == ["encoder", "split", "24x48", "-", "0:16"] and encoder.endswith("rows 16->24")
    info = json.loads(invoke("inspect", configs / "new_inputs.yaml", "--json").output)
    assert [(r["layer"], r["grown"]) for r in info["layers"]] == [("encoder", "rows 16->24"), ("decoder", None)]


def test_verify_base_against_grown_split_and_merged(grown_run, tmp_path):
    base, run = grown_run
    result = invoke("verify", base, run / "split.keras")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        "OK: all 816 frozen entries are bit-identical; 196 of 196 trainable entries moved; "
        "384 new entries in the grown layer encoder"
    )
    assert invoke("merge", run / "split.keras", "-o", tmp_path / "merged.keras").exit_code == 0
    merged = keras.saving.load_model(tmp_path / "merged.keras")
    assert merged.inputs[0].name == "input" and tuple(merged.inputs[0].shape) == (None, 24)  # its name kept
    result = invoke("verify", base, tmp_path / "merged.keras")
    assert result.exit_code == 0 and result.output.startswith("OK: all 816 frozen entries"), result.output
    # an old entry that moved is found
    kernel = merged.get_layer("encoder").kernel
    kernel.assign(np.asarray(kernel) + np.eye(24, 48, dtype="float32"))
    merged.save(tmp_path / "moved.keras")
    result = invoke("verify", base, tmp_path / "moved.keras")
    assert result.exit_code == 1 and result.output.startswith("FAILED: 16 of 816 frozen entries changed; first: encoder.kernel[0, 0]")


@pytest.mark.parametrize(
    "grow, message",
    [
        ("  encoder: {rows: 0}", "{spec}:3: grow.encoder.rows: expected how many rows to add (a positive integer), got 0"),
        ("  decoder: {rows: 2}", "{spec}:3: grow.decoder.rows: layer 'decoder' is fed by 'encoder' (Dense), not by a model input"),
        ("  encoder: {units: 2}\n  encoder: {rows: 2}", "{spec}:4: grow.encoder: duplicate key 'encoder'"),
        ("  encoderr: {units: 2}", "{spec}:3: grow.encoderr: no layer 'encoderr' in model 'sensors'; did you mean 'encoder'?"),
        ("  encoder: {units: 2, init: random}", "{spec}:3: grow.encoder.init: expected one of layer, zeros, mean, got 'random'"),
    ],
)
def test_growth_refusals_are_one_line(configs, tmp_path, grow, message):
    spec = tmp_path / "grow.yaml"
    spec.write_text(f"base: {configs.parent / 'runs' / 'sensors.keras'}\ngrow:\n{grow}\n")
    result = invoke("build", spec, "-o", tmp_path / "o.keras")
    assert result.exit_code == 2
    assert errors(result).startswith("splitnet: error: " + message.format(spec=spec))
    assert not (tmp_path / "o.keras").exists()


def test_flatten_consumer_refused_through_the_cli(configs, tmp_path):
    spec = tmp_path / "grow.yaml"
    spec.write_text(
        "model:\n  input_shape: [3, 4]\n  layers:\n    - {type: Dense, name: h, units: 5}\n"
        "    - {type: Flatten, name: flat}\n    - {type: Dense, name: out, units: 2}\ngrow:\n  h: {units: 1}\n"
    )
    result = invoke("build", spec, "-o", tmp_path / "o.keras")
    assert result.exit_code == 2
    assert errors(result) == (
        f"splitnet: error: {spec}:8: grow.h: layer 'flat' (Flatten) cannot follow the 1 new features of 'h': "
        "splitnet grows through layers that act on each feature alone (activations, dropout, pooling, "
        "BatchNormalization), elementwise merges and a last-axis Concatenate"
    )
