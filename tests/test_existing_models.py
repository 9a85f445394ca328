"""Splitting models people already have: saved to .keras, split through `base:`."""

import textwrap

import keras
import numpy as np
import pytest
from conftest import assert_same_function, is_split, perturb

import splitnet
from splitnet.export import input_structure


def multi_input_branched():
    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    ha = keras.layers.Dense(8, activation="relu", name="da")(a)
    hb = keras.layers.Dense(8, activation="tanh", name="db")(b)
    h = keras.layers.Concatenate(name="cat")([ha, hb])
    h = keras.layers.BatchNormalization(name="bn")(h)
    o1 = keras.layers.Dense(3, activation="softmax", name="o1")(h)
    o2 = keras.layers.Dense(2, name="o2")(keras.layers.Dense(5, name="branch")(h))
    return keras.Model([a, b], [o1, o2], name="multi")


def nested_functional():
    x = keras.Input((6,))
    inner = keras.Model(x, keras.layers.Dense(5, name="inner_d")(keras.layers.Dense(7, name="inner_h")(x)), name="inner")
    y = keras.Input((6,), name="y")
    return keras.Model(y, keras.layers.Dense(2, name="head")(inner(y)), name="outer")


def nested_sequential():
    seq = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="s1"), keras.layers.Dense(4, name="s2")], name="seq")
    x = keras.Input((6,), name="x")
    return keras.Model(x, keras.layers.Dense(2, name="top")(seq(x)), name="ns")


def shared_dense():
    x1, x2 = keras.Input((5,), name="x1"), keras.Input((5,), name="x2")
    shared = keras.layers.Dense(4, name="shared")
    s = keras.layers.Add(name="add")([shared(x1), shared(x2)])
    return keras.Model([x1, x2], keras.layers.Dense(2, name="out")(s), name="siamese")


def sequential():
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(9, activation="relu", name="d1"), keras.layers.Dense(3, name="d2")],
        name="seqmodel",
    )


def slicing():
    # A non-layer operation (GetItem) between two Dense layers.
    x = keras.Input((4, 6), name="x")
    h = keras.layers.Dense(8, name="g")(x)[:, 0, :]
    return keras.Model(x, keras.layers.Dense(3, name="h")(h), name="slicing")


def tensor_ops():
    # keras.ops calls and arithmetic on tensors in the graph.
    x = keras.Input((6,), name="x")
    h = keras.layers.Dense(5, name="g")(keras.ops.relu(x) * 2.0)
    return keras.Model(x, keras.layers.Dense(2, name="h")(keras.ops.tanh(h) + 1.0), name="ops")


def masked_sequence():
    # A mask from Embedding(mask_zero=True) flows through the split Dense into an LSTM.
    x = keras.Input((5,), dtype="int32", name="tokens")
    e = keras.layers.Embedding(10, 4, mask_zero=True, name="embed")(x)
    d = keras.layers.Dense(6, name="d")(e)
    return keras.Model(x, keras.layers.LSTM(3, name="lstm")(d), name="masked")


def masking_layer():
    x = keras.Input((5, 3), name="x")
    d = keras.layers.Dense(6, name="d")(keras.layers.Masking(name="mask")(x))
    return keras.Model(x, keras.layers.LSTM(3, name="lstm")(d), name="masking")


def dict_io():
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    h = keras.layers.Concatenate(name="cat")([a, b])
    outputs = {"y": keras.layers.Dense(2, name="y")(h), "z": keras.layers.Dense(1, name="z")(a)}
    return keras.Model({"a": a, "b": b}, outputs, name="dict_io")


MODELS = {
    "multi": (multi_input_branched, {"da": {"units": [0, 1]}, "o1": {"rows": "0:4"}, "db": {"units": "all"}, "branch": {"units": [4]}}),
    "nested": (nested_functional, {"inner/inner_d": {"units": [1, 3]}, "head": {"units": [0]}}),
    "nested-sequential": (nested_sequential, {"seq/s2": {"units": [0], "rows": [4]}}),
    "shared": (shared_dense, {"shared": {"units": [0, 2]}}),
    "sequential": (sequential, {"d1": {"units": "3:6"}, "d2": {"rows": [0, 8]}}),
    "slicing": (slicing, {"g": {"units": [0, 5]}, "h": {"rows": [1, 2]}}),
    "tensor-ops": (tensor_ops, {"g": {"units": "0:2"}, "h": {"units": [1]}}),
    "masked-sequence": (masked_sequence, {"d": {"units": [0, 1], "rows": [3]}}),
    "masking-layer": (masking_layer, {"d": {"rows": [0]}}),
    "dict-io": (dict_io, {"y": {"units": [0]}, "z": {"bias": True}}),
}


def _inputs(model, n=32, seed=2):
    """A batch in the model's own input structure; integer inputs get token ids with padding."""
    rng = np.random.default_rng(seed)

    def make(t):
        shape = (n,) + tuple(t.shape[1:])
        if "int" in str(t.dtype):
            return (rng.integers(1, 10, size=shape) * (rng.random(shape) < 0.7)).astype("int32")
        return rng.normal(size=shape).astype("float32")

    return keras.tree.map_structure(make, input_structure(model))


def _targets(model, n=32, seed=3):
    rng = np.random.default_rng(seed)
    outputs = model.outputs[0] if isinstance(model, keras.Sequential) else model.output
    return keras.tree.map_structure(lambda t: rng.normal(size=(n,) + tuple(t.shape[1:])).astype("float32"), outputs)


def _flat(outputs):
    return [np.asarray(o) for o in keras.tree.flatten(outputs)]


@pytest.fixture(params=list(MODELS), ids=list(MODELS))
def saved(request, tmp_path):
    """(original model, freeze, spec path) with the model saved as .keras and named by `base:`."""
    make, freeze = MODELS[request.param]
    model = perturb(make())
    model.save(tmp_path / "base.keras")
    lines = ["base: base.keras", "freeze:"]
    for name, rule in freeze.items():
        lines.append(f"  {name}: {dict(rule)}".replace("'", '"'))
    spec = tmp_path / "spec.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return model, freeze, spec


def test_split_through_base_file_keeps_function_and_other_weights(saved):
    model, freeze, spec = saved
    split = splitnet.build_model(spec)
    x = _inputs(model)
    for a, b in zip(_flat(split(x)), _flat(model(x))):
        assert_same_function(a, b)
    assert set(splitnet.frozen_masks(split)) == set(freeze)
    # Every layer not split keeps its weights, and nothing is shared with the original.
    weights = splitnet.merged_weights(split)
    for key, values in splitnet.merged_weights(model).items():
        for got, want in zip(weights[key], values):
            np.testing.assert_array_equal(got, want)
    original_ids = {id(v) for v in model.weights}
    assert not any(id(v) in original_ids for v in split.weights)
    merged = splitnet.merge_model(split)
    for a, b in zip(_flat(merged(x)), _flat(model(x))):
        assert_same_function(a, b)
    # The model's class is kept (a Sequential model stays Sequential), and its input names.
    assert type(split) is type(model) and type(merged) is type(model)
    assert [t.name for t in split.inputs] == [t.name for t in merged.inputs]


def test_training_an_existing_model_keeps_frozen_entries(saved):
    model, freeze, spec = saved
    split = splitnet.build_model(spec)
    before = splitnet.merged_weights(split)
    masks = splitnet.frozen_masks(split)
    split.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.1), loss="mse")
    split.fit(_inputs(model), _targets(split), epochs=2, batch_size=8, verbose=0)
    after = splitnet.merged_weights(split)
    for key, mask in masks.items():
        np.testing.assert_array_equal(after[key][0][mask["kernel"]], before[key][0][mask["kernel"]])
        if mask["bias"].size:
            np.testing.assert_array_equal(after[key][1][mask["bias"]], before[key][1][mask["bias"]])
        assert (after[key][0] != before[key][0])[~mask["kernel"]].all()


def test_shared_dense_stays_shared():
    model = perturb(shared_dense())
    split = splitnet.split_model(model, {"shared": {"units": [0, 2]}})
    layer = split.get_layer("shared")
    assert is_split(layer)
    assert [tuple(w.shape) for w in split.trainable_weights if w.path.startswith("shared")] == [(5, 2), (2,)]
    x = _inputs(model)
    assert_same_function(np.asarray(split(x)), np.asarray(model(x)))
    merged = splitnet.merge_model(split)
    assert type(merged.get_layer("shared")) is keras.layers.Dense
    assert len(merged.weights) == len(model.weights)  # still one shared layer


def test_dense_inside_subclassed_model():
    @keras.saving.register_keras_serializable(package="tests")
    class Block(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = keras.layers.Dense(3, name="inner")

        def call(self, x):
            return self.inner(x)

    x = keras.Input((4,), name="x")
    block = Block(name="block")
    model = perturb(keras.Model(x, keras.layers.Dense(2, name="d")(block(x))))
    split = splitnet.split_model(model, {"block/inner": {"units": [0]}})
    assert isinstance(split.get_layer("block").inner, splitnet.SplitDense)
    assert set(splitnet.frozen_masks(split)) == {"block/inner"}
    data = _inputs(model)
    assert_same_function(np.asarray(split(data)), np.asarray(model(data)))


def test_nested_layer_named_without_outer_is_suggested():
    model = nested_functional()
    with pytest.raises(splitnet.SpecError, match="no layer 'inner_d' in model 'outer'; did you mean 'inner/inner_d'"):
        splitnet.split_model(model, {"inner_d": {"units": [0]}})


def test_non_trainable_layer_is_refused():
    model = sequential()
    model.get_layer("d1").trainable = False
    with pytest.raises(splitnet.SpecError, match="layer 'd1' is not trainable in this model"):
        splitnet.split_model(model, {"d1": {"units": [0]}})


def test_resume_from_model_checkpoint(tmp_path):
    model = perturb(sequential())
    base = splitnet.merged_weights(model)
    split = splitnet.split_model(model, {"d1": {"units": "0:4"}, "d2": {"rows": "0:5"}})
    masks = splitnet.frozen_masks(split)
    split.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.05), loss="mse")
    x, y = _inputs(split, n=64), _targets(split, n=64)
    checkpoint = tmp_path / "ckpt.keras"
    split.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(checkpoint)])

    resumed = keras.saving.load_model(checkpoint)
    assert int(resumed.optimizer.iterations) == 8  # the optimizer state came back
    for a, b in zip(resumed.optimizer.variables, split.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    resumed.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    split.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)  # the uninterrupted run
    after = splitnet.merged_weights(resumed)
    for key, mask in masks.items():
        np.testing.assert_array_equal(after[key][0][mask["kernel"]], base[key][0][mask["kernel"]])
        np.testing.assert_array_equal(after[key][1][mask["bias"]], base[key][1][mask["bias"]])
    for key, weights in splitnet.merged_weights(split).items():  # resuming = not stopping
        for a, b in zip(after[key], weights):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_base_spec_with_relative_path(tmp_path):
    (tmp_path / "models").mkdir()
    perturb(sequential()).save(tmp_path / "models" / "m.keras")
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""\
        base: models/m.keras
        freeze:
          d1: {units: [0]}
          d_1: {units: [0]}
    """))
    with pytest.raises(splitnet.SpecError, match=r"spec.yaml:4: freeze.d_1: no layer 'd_1' in model 'seqmodel'; did you mean 'd1'\?"):
        splitnet.build_model(spec)


def test_dense_shared_across_a_nested_model():
    dense = keras.layers.Dense(3, name="d")
    inner_in = keras.Input((4,))
    encoder = keras.Model(inner_in, dense(inner_in), name="enc")
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    model = perturb(keras.Model([a, b], keras.layers.Concatenate()([encoder(a), dense(b)])))
    split = splitnet.split_model(model, {"d": {"units": [0]}})
    x = _inputs(model)
    assert_same_function(np.asarray(split(x)), np.asarray(model(x)))
    assert len(split.trainable_variables) == 2  # one piece, shared by both calls
    merged = splitnet.merge_model(split)
    assert len(merged.weights) == 2
    assert_same_function(np.asarray(merged(x)), np.asarray(model(x)))
