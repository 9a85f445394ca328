"""The spec: safe YAML, every mistake reported as FILE:LINE: key.path: what."""

import textwrap
from pathlib import Path

import pytest

import splitnet
from splitnet.spec import Spec, load_spec

GOOD = """\
model:
  name: quickstart
  input_shape: [32]
  layers:
    - {type: Dense, name: hidden, units: 64, activation: relu}
    - {type: Dropout, rate: 0.1}
    - {type: Dense, name: head, units: 10, activation: softmax}
freeze:
  hidden:
    units: [0, 1, "8:16", -1]
  head:
    rows: "0:32"
    bias: false
train:
  data: data/train.npz
  loss: sparse_categorical_crossentropy
  optimizer: {name: adamw, learning_rate: 0.001, weight_decay: 0.01}
  epochs: 5
  batch_size: 64
"""


def write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_spec_loads(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert isinstance(spec, Spec)
    assert spec.model.input_shape == (32,)
    assert [r.layer for r in spec.freeze] == ["hidden", "head"]
    assert spec.train.epochs == 5 and spec.train.batch_size == 64
    assert spec.train.optimizer_config == {
        "class_name": "adamw",
        "config": {"learning_rate": 0.001, "weight_decay": 0.01},
    }
    # Relative paths resolve against the spec's folder, not the working directory.
    assert spec.train.data == tmp_path / "data" / "train.npz"


def test_base_path_resolves_against_spec_folder(tmp_path):
    spec = load_spec(write(tmp_path, "base: models/m.keras\nfreeze: {d: {units: [0]}}\n"))
    assert spec.base == tmp_path / "models" / "m.keras" and spec.model is None


def test_mapping_errors_have_no_file_prefix():
    with pytest.raises(splitnet.SpecError) as info:
        load_spec({"model": {"input_shape": [4], "layers": [{"type": "Dense", "units": 3}]}, "freez": {}})
    assert str(info.value) == (
        "freez: unknown key 'freez'; did you mean 'freeze'? (allowed: model, base, form, grow, freeze, train)"
    )


def test_spec_error_is_a_value_error():
    assert issubclass(splitnet.SpecError, ValueError)


# (what to change in GOOD, expected line, expected "key.path: message" start)
BAD = [
    ("units: [0, 1, \"8:16\", -1]", "units: [0, 1, 70]", 10, "freeze.hidden.units[2]: 70 is out of range, layer 'hidden' has 64 units"),
    ("units: [0, 1, \"8:16\", -1]", "units: [0, 1, \"8:6\"]", 10, "freeze.hidden.units[2]: range '8:6' is reversed"),
    ("units: [0, 1, \"8:16\", -1]", "units: [0, \"0:4\"]", 10, "freeze.hidden.units[1]: '0:4' overlaps '0'"),
    ("units: [0, 1, \"8:16\", -1]", "units: []", 10, "freeze.hidden.units: empty list"),
    ("units: [0, 1, \"8:16\", -1]", "units: [1.5]", 10, "freeze.hidden.units[0]: 1.5 is not an index"),
    ("units: [0, 1, \"8:16\", -1]", "units: [[1]]", 10, "freeze.hidden.units[0]: [1] is not an index"),
    ("units: [0, 1, \"8:16\", -1]", "units: [all]", 10, "freeze.hidden.units[0]: all cannot be part of a list"),
    ("units: [0, 1, \"8:16\", -1]", "unitz: [0]", 10, "freeze.hidden.unitz: unknown key 'unitz'; did you mean 'units'?"),
    ("rows: \"0:32\"", "rows: \"0:65\"", 12, "freeze.head.rows: range '0:65': 65 is out of range, layer 'head' has 64 input rows"),
    ("bias: false", "bias: 1", 13, "freeze.head.bias: expected true or false"),
    ("  hidden:\n", "  hiden:\n", 9, "freeze.hiden: no layer 'hiden' in model 'quickstart'; did you mean 'hidden'?"),
    ("  head:\n", "  dropout:\n", 11, "freeze.dropout: layer 'dropout' is of type Dropout; splitnet splits Dense, EinsumDense, Conv1D, Conv2D, Conv3D, Embedding, ReversibleEmbedding layers"),
    ("  name: quickstart\n", "  name: quickstart\n  nmae: x\n", 3, "model.nmae: unknown key 'nmae'; did you mean 'name'?"),
    ("input_shape: [32]", "input_shape: [0]", 3, "model.input_shape[0]: expected a positive integer"),
    ("input_shape: [32]", "input_shape: 32", 3, "model.input_shape: expected a non-empty list"),
    ("{type: Dropout, rate: 0.1}", "{type: Dropot, rate: 0.1}", 6, "model.layers[1].type: 'Dropot' is not a Keras layer; did you mean 'Dropout'?"),
    ("{type: Dropout, rate: 0.1}", "{type: Lambda, function: x}", 6, "model.layers[1].type: Lambda is not allowed here"),
    ("{type: Dropout, rate: 0.1}", "{type: Dropout, rat: 0.1}", 6, "model.layers[1].rat: Dropout has no argument 'rat'; did you mean 'rate'?"),
    ("{type: Dropout, rate: 0.1}", "{type: Dropout, rate: 2}", 6, "model.layers[1]: invalid Dropout arguments"),
    ("{type: Dropout, rate: 0.1}", "{rate: 0.1}", 6, "model.layers[1]: expected a mapping with a `type` key"),
    ("name: head, units: 10", "name: hidden, units: 10", 7, "model.layers[2].name: duplicate layer name 'hidden'"),
    ("epochs: 5", "epochs: 0", 18, "train.epochs: expected a positive integer, got 0"),
    ("batch_size: 64", "batch_size: big", 19, "train.batch_size: expected a positive integer"),
    ("loss: sparse_categorical_crossentropy", "loss: sparse_categorical_crossentropi", 16, "train.loss: 'sparse_categorical_crossentropi' is not a Keras loss; did you mean 'sparse_categorical_crossentropy'?"),
    ("{name: adamw, learning_rate: 0.001, weight_decay: 0.01}", "{name: adamww}", 17, "train.optimizer: 'adamww' is not a Keras optimizer; did you mean 'adamw'?"),
    ("{name: adamw, learning_rate: 0.001, weight_decay: 0.01}", "{name: adamw, lr: 0.1}", 17, "train.optimizer: invalid optimizer 'adamw'"),
    ("  epochs: 5\n", "  epochs: 5\n  epoch: 3\n", 19, "train.epoch: unknown key 'epoch'; did you mean 'epochs'?"),
    ("freeze:\n", "base: m.keras\nfreeze:\n", 8, "base: give exactly one of `model` (a layer stack) and `base`"),
    ("train:\n", "freeze:\n  head: {units: [0]}\ntrain:\n", 14, "freeze: duplicate key 'freeze'"),
    ("model:\n", "modle:\n", 1, "modle: unknown key 'modle'; did you mean 'model'?"),
    ("  head:\n    rows: \"0:32\"\n    bias: false\n", "  head:\n", 11, "freeze.head: nothing to freeze"),
    ("units: [0, 1, \"8:16\", -1]", "units: [0, 1\n", 12, "YAML error: expected ',' or ']'"),
    ("units: [0, 1, \"8:16\", -1]", "units: !!python/object/apply:os.system [echo hi]", 10, "YAML error: could not determine a constructor for the tag"),
]


@pytest.mark.parametrize("old, new, line, message", BAD, ids=[b[3].split(":")[0] + f"-{i}" for i, b in enumerate(BAD)])
def test_bad_spec(tmp_path, old, new, line, message):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(splitnet.SpecError) as info:
        splitnet.build_model(path)
    assert str(info.value).startswith(f"{path}:{line}: {message}"), str(info.value)
    assert "\n" not in str(info.value)


def test_python_tag_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(splitnet.SpecError, match="Python tags are not allowed"):
        load_spec(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "s.yaml: the spec is empty"),
        ("- 1\n", "expected a mapping of model/base/form/grow/freeze/train, got list"),
        ("freeze: {}\n", "give exactly one of `model`"),
        ("base: 3\n", "base: expected the path of a .keras file, got 3"),
    ],
)
def test_bad_top_level(tmp_path, text, message):
    with pytest.raises(splitnet.SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_spec(write(tmp_path, text))


def test_missing_spec_file(tmp_path):
    with pytest.raises(splitnet.SpecError, match="cannot read spec: No such file"):
        load_spec(tmp_path / "nope.yaml")


def test_missing_base_file(tmp_path):
    path = write(tmp_path, "base: nope.keras\nfreeze: {d: {units: [0]}}\n")
    with pytest.raises(splitnet.SpecError, match=r"s.yaml:1: base: .*nope.keras: file not found"):
        splitnet.build_model(path)


def test_base_that_is_not_a_keras_file(tmp_path):
    (tmp_path / "m.keras").write_text("not a zip")
    path = write(tmp_path, "base: m.keras\nfreeze: {d: {units: [0]}}\n")
    with pytest.raises(splitnet.SpecError, match=r"s.yaml:1: base: .*m.keras: not a Keras archive"):
        splitnet.build_model(path)


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_builds(path, configs):
    spec = load_spec(configs / path.name)
    model = splitnet.build_model(spec)
    masks = splitnet.frozen_masks(model)
    projections = ("query", "key", "value", "attention_output")  # what a heads: rule freezes
    named = {f"{r.layer}/{p}" for r in spec.freeze if r.heads for p in projections}
    grown = {r.layer for r in spec.grow if r.freeze_old}  # old entries frozen by default
    assert {r.layer for r in spec.freeze if not r.heads} | named | grown == set(masks)


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    # YAML 1.1 reads 1e-3 as a string; an optimizer argument means the number.
    spec = load_spec(write(tmp_path, GOOD.replace("learning_rate: 0.001", "learning_rate: 1e-3")))
    assert spec.train.optimizer_config["config"]["learning_rate"] == 0.001


# --- index sets from Python: what np.where, range and slicing naturally give -------------

import keras  # noqa: E402
import numpy as np  # noqa: E402


def _frozen_units(value, units=6):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(units, name="head")(inputs))
    split = splitnet.split_model(model, {"head": {"units": value}})
    return np.flatnonzero(splitnet.frozen_masks(split)["head"]["bias"]).tolist()


@pytest.mark.parametrize(
    "value, frozen",
    [
        (np.arange(3), [0, 1, 2]),
        (np.where(np.arange(6) > 3)[0], [4, 5]),
        (np.int64(2), [2]),
        (np.array(5, dtype=np.int32), [5]),
        ((0, 1), [0, 1]),
        (range(1, 4), [1, 2, 3]),
        (slice(1, 3), [1, 2]),
        (slice(-2, None), [4, 5]),
        (slice(None, 2, 1), [0, 1]),
        ([np.int64(0), "2:4"], [0, 2, 3]),
        ([slice(0, 2), 4], [0, 1, 4]),
    ],
    ids=repr,
)
def test_python_index_sets(value, frozen):
    assert _frozen_units(value) == frozen


@pytest.mark.parametrize(
    "value, message",
    [
        (np.array([True, False, True]), "a boolean array is a mask, not indices; pass np.flatnonzero(mask)"),
        (np.array([0.5]), "indices must be integers, got an array of float64"),
        (np.zeros((2, 2), int), "indices must be a 1-D array, got shape (2, 2)"),
        (slice(0, 4, 2), "only slices with step 1 are index sets"),
        (slice(0.5, 2), "slice bounds must be integers"),
        (range(0), "empty list"),
        (np.array([], dtype=int), "empty list"),
        (np.array([9]), "freeze.head.units[0]: 9 is out of range, layer 'head' has 6 units"),
        ((0, 0), "freeze.head.units[1]: '0' is listed twice"),
        ({1, 2}, "is not an index"),
    ],
    ids=repr,
)
def test_bad_python_index_sets_are_spec_errors(value, message):
    with pytest.raises(splitnet.SpecError) as info:
        _frozen_units(value)
    assert message in str(info.value)
    assert str(info.value).startswith("freeze.head.units")


def test_numpy_bool_bias_flag():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(inputs))
    split = splitnet.split_model(model, {"head": {"bias": np.bool_(True)}})
    assert splitnet.frozen_masks(split)["head"]["bias"].all()
