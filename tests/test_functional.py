"""The functional form: split layers as nested models of plain Keras pieces.

The layer-kind table tests (tests/test_kinds.py) run every kind and rule in
this form too (`form="auto"`); here: what only this form promises (plain
Keras loads, trains and saves it without splitnet; summaries show the
pieces), chains, branches, shared layers, nested and Sequential models,
growing, and where the form does not apply.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import perturb

import splitnet
from splitnet import functional


def chain():
    """input(6) -> hidden Dense(5, tanh) -> branch Dense(4) and shared Dense(4) twice -> add."""
    inputs = keras.Input((6,), name="features")
    hidden = keras.layers.Dense(5, activation="tanh", name="hidden")(inputs)
    shared = keras.layers.Dense(5, activation="relu", name="shared")
    twice = shared(shared(hidden))
    left = keras.layers.Dense(4, name="left")(hidden)
    right = keras.layers.Dense(4, name="right")(twice)
    model = keras.Model(inputs, keras.layers.Add(name="sum")([left, right]), name="net")
    return perturb(model)


RULES = {
    "hidden": {"units": [0, 3], "rows": "4:"},
    "shared": {"units": [1]},
    "left": {"rows": [0, 2, 4], "bias": True},
    "right": {"units": "2:"},
}


def x_data(n=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 6)).astype("float32")


def test_split_model_is_plain_keras_with_readable_pieces():
    model = chain()
    split = splitnet.split_model(model, RULES, form="functional")
    x = x_data()
    np.testing.assert_allclose(split(x), model(x), rtol=1e-5, atol=1e-6)
    assert [layer.name for layer in split.layers] == [layer.name for layer in model.layers]
    hidden = split.get_layer("hidden")
    assert type(hidden) is keras.Model or type(hidden).__name__ == "Functional"
    names = {layer.name: layer for layer in hidden.layers}
    assert type(names["hidden__trainable"]) is keras.layers.Dense and names["hidden__trainable"].trainable
    assert type(names["hidden__frozen"]) is keras.layers.Dense and not names["hidden__frozen"].trainable
    assert type(names["hidden__frozen_rows"]) is keras.layers.Dense and not names["hidden__frozen_rows"].trainable
    assert type(names["hidden__join"]) is keras.layers.Concatenate
    assert type(names["hidden__sum"]) is keras.layers.Add
    assert type(names["hidden__activation"]) is keras.layers.Activation
    # Cross-layer pruning: `left` (called once on `hidden` alone) reads hidden's trainable
    # and frozen units as two inputs, its pieces cut along them; `shared` (called twice)
    # and `right` read joined outputs.
    left, shared = functional.read(split.get_layer("left")), functional.read(split.get_layer("shared"))
    assert len(split.get_layer("left").inputs) == 2 and len(split.get_layer("hidden").outputs) == 3
    assert left.plan.row_cuts == ((1, 2, 4), (0, 3)) and shared.plan.row_cuts is None
    assert [p.name for p in left.plan.pieces] == ["trainable_0", "trainable_1", "frozen_rows_0", "frozen_rows_1"]
    # Every class in the split model is Keras' own.
    classes = {type(layer).__module__.split(".")[0] for layer in split._flatten_layers(include_self=True)}
    assert classes == {"keras"}
    # Masks, counts and merge through the original names.
    masks = splitnet.frozen_masks(split)
    assert sorted(masks) == sorted(RULES)
    hidden_kernel = masks["hidden"]["kernel"]
    assert hidden_kernel[4:].all() and hidden_kernel[:, [0, 3]].all() and not hidden_kernel[:4][:, [1, 2, 4]].any()
    assert masks["left"]["bias"].all() and masks["left"]["kernel"][[0, 2, 4]].all()
    trainable = sum(int(np.prod(w.shape)) for w in split.trainable_weights)
    frozen = sum(int(m.sum()) for layer in masks.values() for m in layer.values())
    assert trainable + frozen == model.count_params()
    merged = splitnet.merge_model(split)
    assert merged.get_config() == model.get_config()
    for a, b in zip(merged.weights, model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gradients_of_weights_and_inputs_equal_the_plain_model():
    model = chain()
    split = splitnet.split_model(model, RULES, form="functional")
    x = tf.constant(x_data(seed=3))
    w = np.random.default_rng(4).normal(size=(8, 4)).astype("float32")

    def grads(m, variables):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(m(x) * w)
        return tape.gradient(loss, [x] + variables)

    plain = grads(model, model.trainable_weights)
    np.testing.assert_allclose(grads(split, [])[0], plain[0], rtol=1e-5, atol=1e-5)
    plain_by_layer = {}
    for layer in model.layers:
        if layer.weights:
            plain_by_layer[layer.name] = [np.asarray(plain[1 + [id(v) for v in model.trainable_weights].index(id(w))]) for w in layer.weights]
    for key in RULES:
        layout = functional.read(split.get_layer(key))
        variables = [v for layer in layout.pieces for v in layer.trainable_weights]
        got = iter(grads(split, variables)[1:])
        full = plain_by_layer[key]
        for piece, layer in zip(layout.plan.pieces, layout.pieces):
            if piece.frozen:
                continue
            kernel_mask, bias_mask = layout.plan.piece_masks(piece)
            np.testing.assert_allclose(np.asarray(next(got)).ravel(), full[0][kernel_mask], rtol=1e-5, atol=1e-5)
            if piece.use_bias:
                np.testing.assert_allclose(np.asarray(next(got)).ravel(), full[1][bias_mask], rtol=1e-5, atol=1e-5)


def test_fit_keeps_frozen_entries_bit_identical_and_saves_optimizer_state():
    model = chain()
    split = splitnet.split_model(model, RULES, form="functional")
    split.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.5), loss="mse")
    before, masks = splitnet.merged_weights(split), splitnet.frozen_masks(split)
    x = x_data(32)
    split.fit(x, np.random.default_rng(1).normal(size=(32, 4)), epochs=2, batch_size=8, verbose=0)
    after = splitnet.merged_weights(split)
    for key, layer_masks in masks.items():
        for mask, old, new in zip(layer_masks.values(), before[key], after[key]):
            np.testing.assert_array_equal(new[mask], old[mask])
            assert (new != old)[~mask].all()
    trainable = sum(int(np.prod(w.shape)) for w in split.trainable_weights)
    assert sum(int(np.prod(v.shape)) for v in split.optimizer.variables if len(v.shape)) == 2 * trainable


NO_SPLITNET = textwrap.dedent(
    """
    import sys
    sys.modules["splitnet"] = None  # `import splitnet` fails here
    import keras, numpy as np
    model = keras.saving.load_model(sys.argv[1], safe_mode=True)
    x = np.load(sys.argv[2])
    before = [np.array(w) for w in model.non_trainable_weights]
    model.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.5), loss="mse")
    model.fit(x, np.ones((len(x), 4), "float32"), epochs=2, batch_size=4, verbose=0)
    for old, new in zip(before, model.non_trainable_weights):
        assert (np.asarray(new) == old).all(), "a frozen piece moved"
    model.save(sys.argv[3])
    print(len(model.trainable_weights), len(model.non_trainable_weights))
    """
)


def test_plain_keras_loads_trains_and_saves_it_without_splitnet(tmp_path):
    model = chain()
    split = splitnet.split_model(model, RULES, form="functional")
    split.save(tmp_path / "split.keras")
    x = x_data(16)
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [sys.executable, "-c", NO_SPLITNET, str(tmp_path / "split.keras"), str(tmp_path / "x.npy"), str(tmp_path / "trained.keras")],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(len(split.trainable_weights)), str(len(split.non_trainable_weights))]
    # splitnet reads the split back from the file alone, and merges it.
    trained = splitnet.load_model(tmp_path / "trained.keras")
    masks = splitnet.frozen_masks(trained)
    assert {k: {n: m.tolist() for n, m in v.items()} for k, v in masks.items()} == {
        k: {n: m.tolist() for n, m in v.items()} for k, v in splitnet.frozen_masks(split).items()
    }
    merged = splitnet.merge_model(trained)
    # (A model loaded from a file has lists where the built one has tuples.)
    assert json.dumps(merged.get_config(), sort_keys=True) == json.dumps(model.get_config(), sort_keys=True)
    np.testing.assert_allclose(merged(x), trained(x), rtol=1e-5, atol=1e-6)
    for key, layer_masks in masks.items():
        for mask, old, new in zip(layer_masks.values(), splitnet.merged_weights(model)[key], splitnet.merged_weights(merged)[key]):
            np.testing.assert_array_equal(new[mask], old[mask])


def test_sequential_and_nested_models_keep_their_classes():
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="a"), keras.layers.Dense(4, name="b")], name="inner")
    inputs = keras.Input((6,))
    model = perturb(keras.Model(inputs, keras.layers.Dense(3, name="top")(inner(inputs))))
    split = splitnet.split_model(model, {"inner/a": {"rows": [0, 1]}, "top": {"units": [2]}}, form="functional")
    assert type(split.get_layer("inner")) is keras.Sequential
    assert functional.is_split(split.get_layer("inner").get_layer("a"))
    x = x_data()
    np.testing.assert_allclose(split(x), model(x), rtol=1e-5, atol=1e-6)
    assert sorted(splitnet.frozen_masks(split)) == ["inner/a", "top"]
    merged = splitnet.merge_model(split)
    assert merged.get_config() == model.get_config()
    sequential = perturb(keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="a")], name="seq"))
    split = splitnet.split_model(sequential, {"a": {"units": [0]}}, form="functional")
    assert type(split) is keras.Sequential
    assert splitnet.merge_model(split).get_config() == sequential.get_config()


def test_auto_splits_layers_inside_subclassed_layers_in_place():
    inputs = keras.Input((5, 8))
    attention = keras.layers.MultiHeadAttention(2, 3, name="attn")
    hidden = keras.layers.Dense(8, name="hidden")(attention(inputs, inputs))
    model = perturb(keras.Model(inputs, hidden))
    split = splitnet.split_model(model, {"attn": {"heads": [1]}, "hidden": {"units": [0]}}, form="auto")
    assert functional.is_split(split.get_layer("hidden"))
    assert type(split.get_layer("attn")) is keras.layers.MultiHeadAttention  # its projections split in place
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    np.testing.assert_allclose(split(x), model(x), rtol=1e-5, atol=1e-5)
    merged = splitnet.merge_model(split)
    assert merged.get_config() == model.get_config()
    with pytest.raises(splitnet.SpecError, match=(
        r"freeze\.attn\.heads: layer 'attn/query' cannot be split in the functional form: 'attn' is a "
        r"MultiHeadAttention, whose own class or Python code calls the layer; .*use form: in_place \(or auto\)"
    )):
        splitnet.split_model(model, {"attn": {"heads": [1]}}, form="functional")
    with pytest.raises(splitnet.SpecError, match=r"form: expected one of auto, functional, in_place, got 'graph'"):
        splitnet.split_model(model, {"hidden": {"units": [0]}}, form="graph")


def test_a_bias_held_alone_falls_back_in_place_under_auto():
    model = chain()
    split = splitnet.split_model(model, {"hidden": {"units": [0], "bias": True}}, form="auto")
    assert splitnet.SplitDense in type(split.get_layer("hidden")).__mro__
    with pytest.raises(splitnet.SpecError, match="no Keras layer holds a bias alone"):
        splitnet.split_model(model, {"hidden": {"units": [0], "bias": True}}, form="functional")


def test_grown_model_in_the_functional_form():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, activation="relu", name="hidden")(inputs)
    model = perturb(keras.Model(inputs, keras.layers.Dense(3, name="classes")(hidden)))
    grown = splitnet.grow_model(model, {"classes": {"units": 2}}, form="functional")
    assert functional.is_split(grown.get_layer("classes"))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_array_equal(np.asarray(grown(x))[:, :3], np.asarray(model(x)))
    mask = splitnet.frozen_masks(grown)["classes"]["kernel"]
    assert mask[:, :3].all() and not mask[:, 3:].any()
    merged = splitnet.merge_model(grown)
    assert type(merged.get_layer("classes")) is keras.layers.Dense and merged.get_layer("classes").units == 5


def test_spec_form_and_the_command(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(
        """
        model:
          input_shape: [5]
          layers:
            - {type: Dense, name: hidden, units: 2, activation: relu}
            - {type: Dense, name: output, units: 2}
        form: functional
        freeze:
          output: {rows: [0]}
        """
    ))
    model = splitnet.build_model(str(spec))
    assert functional.is_split(model.get_layer("output"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text().replace("form: functional", "form: functionl"))
    with pytest.raises(splitnet.SpecError, match=r"bad.yaml:7: form: expected one of auto, functional, in_place, got 'functionl'"):
        splitnet.build_model(str(bad))
    from click.testing import CliRunner

    from splitnet.cli import main

    result = CliRunner().invoke(main, ["build", str(spec), "-o", str(tmp_path / "in_place.keras"), "--form", "in_place"])
    assert result.exit_code == 0, result.output
    loaded = splitnet.load_model(tmp_path / "in_place.keras")
    assert splitnet.SplitDense in type(loaded.get_layer("output")).__mro__
    result = CliRunner().invoke(main, ["build", str(spec), "-o", str(tmp_path / "functional.keras")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "functional.keras")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[-1] == "form"
    (row,) = [line for line in lines if line.startswith("output ")]
    assert row.split()[-1] == "functional"


def test_layers_that_cannot_take_the_functional_form_stay_in_place_under_auto():
    """A masked input (a nested model would drop the mask), a layer shared between a
    nested model and the outer graph (Keras rebuilds it as two), a Constant initializer
    of the layer's shape (no piece can take it)."""
    ids = keras.Input((4,), dtype="int32")
    embedded = keras.layers.Embedding(10, 6, mask_zero=True, name="embed")(ids)
    dense = keras.layers.Dense(6, name="masked")(embedded)
    pooled = keras.layers.GlobalAveragePooling1D()(dense)  # reads the mask
    model = perturb(keras.Model(ids, pooled))
    split = splitnet.split_model(model, {"masked": {"units": [0]}})
    assert splitnet.SplitDense in type(split.get_layer("masked")).__mro__
    x = np.array([[1, 2, 0, 0], [3, 0, 0, 0]], "int32")
    np.testing.assert_allclose(split(x), model(x), rtol=1e-6)
    with pytest.raises(splitnet.SpecError, match="reads a masked input"):
        splitnet.split_model(model, {"masked": {"units": [0]}}, form="functional")

    shared = keras.layers.Dense(3, name="d")
    inner_in = keras.Input((4,))
    encoder = keras.Model(inner_in, shared(inner_in), name="enc")
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Concatenate()([encoder(a), shared(b)]), name="outer")
    with pytest.raises(splitnet.SpecError, match=r"it is shared by several models \('outer', 'enc'\)"):
        splitnet.split_model(model, {"d": {"units": [0]}}, form="functional")

    inputs = keras.Input((3,))
    constant = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant(np.ones((3, 2))), name="c")
    model = keras.Model(inputs, constant(inputs))
    with pytest.raises(splitnet.SpecError, match="its kernel_initializer is a Constant of the layer's shape"):
        splitnet.split_model(model, {"c": {"units": [0]}}, form="functional")
