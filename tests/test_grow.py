"""Growing a trained model: new units, input rows and tokens, old entries frozen and unchanged."""

from functools import partial

import keras
import numpy as np
import pytest

import splitnet
from conftest import perturb, plan_of
from splitnet import SpecError
from splitnet.grow import geometry, grow_array
from splitnet.spec import Where

RNG = np.random.default_rng(0)


def _floats(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _ids(shape, vocabulary, seed=1):
    return np.random.default_rng(seed).integers(0, vocabulary, size=shape).astype("int32")


def _pad(x, n):
    """`x` with `n` new input features, all zero."""
    return np.concatenate([x, np.zeros(x.shape[:-1] + (n,), x.dtype)], axis=-1)


# One model per layer kind: (build, grow rules, base input, grown input, old outputs).
# `old` slices the grown model's outputs down to the base model's.


def dense_model():
    inputs = keras.Input((12,), name="features")
    h = keras.layers.Dense(20, activation="relu", name="trunk")(inputs)
    h = keras.layers.Dropout(0.2, name="drop")(h)
    return keras.Model(inputs, keras.layers.Dense(5, name="classes")(h), name="dense_net")


def conv_model():
    inputs = keras.Input((10, 10, 3), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Conv2D(6, 3, padding="same", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(4, name="classes")(h), name="conv_net")


def conv1d_model():
    inputs = keras.Input((9, 5), name="signal")
    h = keras.layers.Conv1D(7, 3, padding="causal", dilation_rate=2, name="conv")(inputs)
    return keras.Model(inputs, keras.layers.Conv1D(3, 1, name="out")(h))


def conv3d_model():
    inputs = keras.Input((4, 4, 4, 2), name="volume")
    h = keras.layers.Conv3D(3, 2, name="conv")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling3D()(h)))


def einsum_model():
    inputs = keras.Input((6, 8), name="x")
    h = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 10), bias_axes="d", activation="tanh", name="proj")(inputs)
    return keras.Model(inputs, keras.layers.EinsumDense("abd,de->abe", output_shape=(None, 3), name="out")(h))


def embedding_model():
    inputs = keras.Input((7,), dtype="int32", name="ids")
    h = keras.layers.Embedding(30, 8, name="tokens")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(h))


def tied_model(tie_weights=True):
    inputs = keras.Input((7,), dtype="int32", name="ids")
    table = keras.layers.ReversibleEmbedding(30, 8, tie_weights=tie_weights, name="tokens")
    h = keras.layers.Dense(8, activation="tanh", name="mix")(table(inputs))
    return keras.Model(inputs, table(h, reverse=True), name="lm")


CASES = {
    # id: (build, grow, base input, grown input, old outputs)
    "dense-classes": (dense_model, {"classes": {"units": 3}}, _floats((16, 12)), None, np.s_[..., :5]),
    "dense-hidden": (dense_model, {"trunk": {"units": 6}}, _floats((16, 12)), None, np.s_[...]),
    "dense-inputs": (dense_model, {"trunk": {"rows": 4}}, _floats((16, 12)), _pad(_floats((16, 12)), 4), np.s_[...]),
    "dense-all": (
        dense_model, {"trunk": {"units": 2, "rows": 3}, "classes": {"units": 2, "init": "mean"}},
        _floats((16, 12)), _pad(_floats((16, 12)), 3), np.s_[..., :5],
    ),
    "conv-filters": (conv_model, {"conv": {"units": 4}}, _floats((4, 10, 10, 3)), None, np.s_[...]),
    "conv-channels": (conv_model, {"conv": {"rows": 2}, "classes": {"units": 1}}, _floats((4, 10, 10, 3)), _pad(_floats((4, 10, 10, 3)), 2), np.s_[..., :4]),
    "conv1d": (conv1d_model, {"conv": {"units": 2}, "out": {"units": 2, "init": "zeros"}}, _floats((4, 9, 5)), None, np.s_[..., :3]),
    "conv3d": (conv3d_model, {"conv": {"units": 2, "rows": 1}}, _floats((3, 4, 4, 4, 2)), _pad(_floats((3, 4, 4, 4, 2)), 1), np.s_[...]),
    "einsum": (einsum_model, {"proj": {"units": 3, "rows": 2}}, _floats((4, 6, 8)), _pad(_floats((4, 6, 8)), 2), np.s_[...]),
    "embedding-tokens": (embedding_model, {"tokens": {"rows": 5, "init": "mean"}}, _ids((8, 7), 30), None, np.s_[...]),
    "embedding-dims": (embedding_model, {"tokens": {"units": 4}}, _ids((8, 7), 30), None, np.s_[...]),
    "tied-tokens": (tied_model, {"tokens": {"rows": 6}}, _ids((8, 7), 30), None, np.s_[..., :30]),
    "untied-tokens": (lambda: tied_model(False), {"tokens": {"rows": 6, "init": "mean"}}, _ids((8, 7), 30), None, np.s_[..., :30]),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    build, grow, x, x_grown, old = CASES[request.param]
    keras.utils.set_random_seed(0)
    base = build()
    base(x)
    perturb(base)
    for layer in base.layers:  # BatchNormalization: real statistics, not the defaults
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(np.abs(np.asarray(layer.moving_variance)) + 0.5)
    grown = splitnet.grow_model(base, grow)
    return base, grown, grow, x, x if x_grown is None else x_grown, old


# Cases whose grown axis then goes through a reduction (BatchNormalization, an average
# pool, a convolution's sum over more input channels): TensorFlow may vectorize it
# differently over more channels (oneDNN blocks a convolution's channels by what the CPU
# has: bit for bit on one machine, not on another), so their old outputs agree to
# float32 rounding (README, Exactness); every other case is bit for bit.
REDUCED = {"conv-filters", "conv-channels", "conv1d", "conv3d"}


def test_old_outputs_bit_identical_right_after_growing(case, request):
    base, grown, _, x, x_grown, old = case
    before, after = np.asarray(base(x, training=False)), np.asarray(grown(x_grown, training=False))
    assert after[old].shape == before.shape
    if request.node.callspec.params["case"] in REDUCED:
        np.testing.assert_allclose(after[old], before, rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(after[old], before)


def test_compiled_old_outputs_agree_to_float32_rounding(case):
    # In a tf.function (predict, fit), TensorFlow may fuse the plain layer's matmul,
    # bias and activation into one kernel whose activation rounds differently.
    base, grown, _, x, x_grown, old = case
    np.testing.assert_allclose(grown.predict(x_grown, verbose=0)[old], base.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_grown_layers_have_new_sizes_and_old_entries_frozen(case):
    base, grown, grow, _, _, _ = case
    masks = splitnet.frozen_masks(grown)
    old_weights, new_weights = splitnet.merged_weights(base), splitnet.merged_weights(grown)
    assert set(grow) <= set(masks)  # every grown layer is split; layers that follow may be too
    for key in masks:
        layer = grown.get_layer(key)
        before = geometry(base.get_layer(key), key, None, Where())
        assert plan_of(layer).grown_from == (before.in_dim, before.units)
        assert (plan_of(layer).in_dim, plan_of(layer).units) != plan_of(layer).grown_from
        for old, new, mask in zip(old_weights[key], new_weights[key], masks[key].values()):
            block = tuple(slice(0, n) for n in old.shape)
            np.testing.assert_array_equal(new[block], old)  # old entries where they were
            assert mask[block].all()  # ... and frozen
        kernel = next(iter(masks[key].values()))
        assert not kernel.all()  # the new entries train


def test_training_keeps_old_entries_and_moves_new_ones(case):
    base, grown, _, _, x_grown, _ = case
    start = splitnet.merged_weights(grown)
    grown.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.5), loss="mse")
    if x_grown.dtype.kind == "f":  # new inputs that are not zero, new tokens that occur
        x_train = _floats(x_grown.shape, seed=7)
    else:
        x_train = _ids(x_grown.shape, plan_of(grown.get_layer("tokens")).in_dim, seed=7)
    y = np.asarray(grown(x_train)) + 1.0
    grown.fit(x_train, y, epochs=2, batch_size=4, verbose=0)
    check = splitnet.verify(base, grown)
    assert check.frozen > 0 and check.changed == 0, check.describe_first()
    assert set(check.grown) == set(splitnet.frozen_masks(grown)) | ({"bn"} & set(check.grown))  # BatchNorm grows too
    masks, end = splitnet.frozen_masks(grown), splitnet.merged_weights(grown)
    for key in masks:
        kernel_mask, before, after = next(iter(masks[key].values())), start[key][0], end[key][0]
        assert (before[~kernel_mask] != after[~kernel_mask]).any(), key  # new entries moved
    merged = splitnet.merge_model(grown)  # the plain grown architecture
    assert [type(l).__name__ for l in merged.layers] == [type(l).__name__ for l in base.layers]
    assert [l.name for l in merged.layers] == [l.name for l in base.layers]
    assert [i.name for i in merged.inputs] == [i.name for i in base.inputs]
    again = splitnet.verify(base, merged)  # no masks in a merged model: every old entry of grown layers
    assert again.changed == 0 and again.new == check.new and again.frozen >= check.frozen


# --- where growth goes: nested models, Sequential, Concatenate, merges -----------------


def test_nested_model_grows_through_its_boundary():
    inner_in = keras.Input((6,), name="inner_in")
    encoder = keras.Model(inner_in, keras.layers.Dense(5, activation="relu", name="proj")(inner_in), name="encoder")
    a, b = keras.Input((6,), name="a"), keras.Input((3,), name="b")
    joined = keras.layers.Concatenate()([b, encoder(a)])  # the grown branch last
    base = perturb(keras.Model([a, b], keras.layers.Dense(2, name="head")(joined)))
    grown = splitnet.grow_model(base, {"encoder/proj": {"units": 3, "rows": 2}})
    assert [tuple(i.shape) for i in grown.inputs] == [(None, 8), (None, 3)]
    assert [i.name for i in grown.inputs] == ["a", "b"]
    x = [_floats((5, 6)), _floats((5, 3), seed=2)]
    np.testing.assert_array_equal(grown([_pad(x[0], 2), x[1]]), base(x))
    assert set(splitnet.frozen_masks(grown)) == {"encoder/proj", "head"}
    assert plan_of(grown.get_layer("head")).grown_from == (8, 2)


def test_sequential_model():
    base = perturb(keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, activation="relu", name="h"), keras.layers.Dense(2, name="out")]
    ))
    grown = splitnet.grow_model(base, {"h": {"units": 2, "rows": 1}, "out": {"units": 1}})
    assert isinstance(grown, keras.Sequential) and grown.inputs[0].shape == (None, 5)
    x = _floats((3, 4))
    np.testing.assert_array_equal(np.asarray(grown(_pad(x, 1)))[:, :2], base(x))


def test_elementwise_merge_of_two_grown_branches():
    inputs = keras.Input((4,), name="x")
    left, right = keras.layers.Dense(3, name="left")(inputs), keras.layers.Dense(3, name="right")(inputs)
    base = perturb(keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.Add()([left, right]))))
    grown = splitnet.grow_model(base, {"left": {"units": 2}, "right": {"units": 2}})
    x = _floats((3, 4))
    np.testing.assert_array_equal(grown(x), base(x))


def test_shared_input_grows_every_reader():
    inputs = keras.Input((4,), name="x")
    a, b = keras.layers.Dense(3, name="a")(inputs), keras.layers.Dense(3, name="b")(inputs)
    base = perturb(keras.Model(inputs, [a, b]))
    grown = splitnet.grow_model(base, {"a": {"rows": 2}})
    assert plan_of(grown.get_layer("b")).grown_from == (4, 3)  # b reads the same input: its rows grow too
    x = _floats((3, 4))
    for new, old in zip(grown(_pad(x, 2)), base(x)):
        np.testing.assert_array_equal(new, old)


# --- init and old: --------------------------------------------------------------------


def test_init_modes_for_new_classes():
    base = perturb(dense_model())
    old_kernel, old_bias = base.get_layer("classes").get_weights()
    for init, expect in (("zeros", lambda k, b: (0 * k, 0 * b)), ("mean", lambda k, b: (k.mean(1), b.mean()))):
        grown = splitnet.merge_model(splitnet.grow_model(base, {"classes": {"units": 2, "init": init}}))
        kernel, bias = grown.get_layer("classes").get_weights()
        want_kernel, want_bias = expect(old_kernel, old_bias)
        np.testing.assert_allclose(kernel[:, 5:], np.broadcast_to(np.reshape(want_kernel, (20, -1))[:, :1], (20, 2)), rtol=1e-5)
        np.testing.assert_allclose(bias[5:], np.broadcast_to(np.ravel(want_bias)[:1], (2,)), rtol=1e-5)
    layer = splitnet.merge_model(splitnet.grow_model(base, {"classes": {"units": 2}})).get_layer("classes")
    assert np.std(layer.get_weights()[0][:, 5:]) > 0  # the layer's own initializer (glorot)


def test_grow_array_zeroes_new_inputs_into_old_outputs():
    out = grow_array(np.ones((2, 3)), np.full((4, 5), 9.0), {0: ("rows", "in"), 1: ("units", "mean")}, "mean")
    np.testing.assert_array_equal(out[:2, :3], 1.0)
    np.testing.assert_array_equal(out[2:, :3], 0.0)  # new rows into old units
    np.testing.assert_array_equal(out[:, 3:], np.broadcast_to(out[:, :3].mean(1, keepdims=True), (4, 2)))


def test_old_trainable_and_freeze_rules_override_the_default():
    base = perturb(dense_model())
    plain = splitnet.grow_model(base, {"classes": {"units": 2, "old": "trainable"}})
    assert splitnet.frozen_masks(plain) == {}
    ruled = splitnet.grow_model(base, {"classes": {"units": 2}}, freeze={"classes": {"units": [0]}, "trunk": {"units": "all"}})
    masks = splitnet.frozen_masks(ruled)
    assert masks["classes"]["bias"].tolist() == [True] + [False] * 6  # the rule, on the grown layer
    assert masks["trunk"]["kernel"].all()


def test_grown_split_model_saves_and_loads(tmp_path):
    base = perturb(dense_model())
    grown = splitnet.grow_model(base, {"classes": {"units": 3}})
    grown.save(tmp_path / "grown.keras")
    loaded = splitnet.load_model(tmp_path / "grown.keras")
    assert plan_of(loaded.get_layer("classes")) == plan_of(grown.get_layer("classes"))
    assert plan_of(loaded.get_layer("classes")).grown_from == (20, 5)
    x = _floats((4, 12))
    np.testing.assert_array_equal(loaded(x), grown(x))
    merged = splitnet.merge_model(loaded)
    assert type(merged.get_layer("classes")) is keras.layers.Dense
    assert merged.get_layer("classes").get_config()["units"] == 8


# --- refusals: one line that says where and what --------------------------------------


def _residual():
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(4, name="h")(inputs)
    return perturb(keras.Model(inputs, keras.layers.Add(name="add")([inputs, h])))


def _flattened():
    inputs = keras.Input((3, 4), name="x")
    h = keras.layers.Dense(5, name="h")(inputs)
    return perturb(keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.Flatten(name="flatten")(h))))


def _normalized():
    inputs = keras.Input((4,), name="x")
    h = keras.layers.LayerNormalization(name="norm")(keras.layers.Dense(5, name="h")(inputs))
    return perturb(keras.Model(inputs, keras.layers.Dense(2, name="out")(h)))


def _hidden(activation):
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(5, activation=activation, name="h")(inputs)
    return perturb(keras.Model(inputs, keras.layers.Dense(2, name="out")(h)))


def _concatenated_first():
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Concatenate(name="concatenate")([keras.layers.Dense(3, name="h")(inputs), inputs])
    return perturb(keras.Model(inputs, keras.layers.Dense(2, name="out")(h)))


def _heads_then_dense():
    inputs = keras.Input((5, 8), name="x")
    heads = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 4), name="query")(inputs)
    return perturb(keras.Model(inputs, keras.layers.Dense(3, name="out")(heads)))


def _shared_by_two_inputs():
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    shared = keras.layers.Dense(3, name="shared")
    return perturb(keras.Model([a, b], [shared(a), shared(b)]))


def _shared_by_grown_and_plain():
    inputs = keras.Input((4,), name="x")
    shared = keras.layers.Dense(3, name="shared")
    grown = keras.layers.Dense(3, name="pa")(inputs)
    return perturb(keras.Model(inputs, [shared(grown), shared(keras.layers.Dense(3, name="pb")(inputs))]))


def _own_output():
    inputs = keras.Input((3,), name="x")
    square = keras.layers.Dense(3, name="sq")
    return perturb(keras.Model(inputs, square(square(inputs))))


def _nested_twice():
    inner_in = keras.Input((4,))
    encoder = keras.Model(inner_in, keras.layers.Dense(2, name="proj")(inner_in), name="encoder")
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    return perturb(keras.Model([a, b], keras.layers.Concatenate()([encoder(a), encoder(b)])))


def _rescaled():
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Rescaling(np.arange(1.0, 7.0), name="scale")(keras.layers.Dense(6, name="h")(inputs))
    return perturb(keras.Model(inputs, keras.layers.Dense(2, name="out")(h)))


def _pool_channels_first():
    inputs = keras.Input((5, 4), name="x")
    h = keras.layers.Dense(6, name="h")(inputs)
    return perturb(keras.Model(inputs, keras.layers.GlobalAveragePooling1D(data_format="channels_first", name="pool")(h)))


def _heads_then_pool():
    inputs = keras.Input((5, 8), name="x")
    heads = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 4), name="query")(inputs)
    return perturb(keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(heads)))


def _trailing_ellipsis():
    inputs = keras.Input((4, 3), name="x")
    return perturb(keras.Model(inputs, keras.layers.EinsumDense("ab...,bc->ac...", output_shape=(5, 3), name="e")(inputs)))


def _grouped_follower():
    inputs = keras.Input((6, 4), name="x")
    h = keras.layers.Conv1D(4, 1, name="c1")(inputs)
    return perturb(keras.Model(inputs, keras.layers.Conv1D(2, 1, groups=2, name="grouped")(h)))


def _attention():
    inputs = keras.Input((5, 8), name="x")
    return perturb(keras.Model(inputs, keras.layers.MultiHeadAttention(2, 4, name="attn")(inputs, inputs)))


@pytest.mark.parametrize(
    "build, grow, message",
    [
        (dense_model, {"classes": {"units": 0}}, "grow.classes.units: expected how many units to add (a positive integer), got 0"),
        (dense_model, {"classes": {"rows": "3"}}, "grow.classes.rows: expected how many rows to add (a positive integer), got '3'"),
        (dense_model, {"classes": {"units": True}}, "grow.classes.units: expected how many units to add"),
        (dense_model, {"classes": {}}, "grow.classes: nothing to grow; give units and/or rows"),
        (dense_model, {"classes": {"units": 1, "init": "mena"}}, "grow.classes.init: expected one of layer, zeros, mean, got 'mena'; did you mean 'mean'?"),
        (dense_model, {"classes": {"units": 1, "old": "kept"}}, "grow.classes.old: expected frozen or trainable, got 'kept'"),
        (dense_model, {"clases": {"units": 1}}, "grow.clases: no layer 'clases' in model 'dense_net'; did you mean 'classes'?"),
        (dense_model, {"drop": {"units": 1}}, "grow.drop: layer 'drop' is of type Dropout; splitnet grows"),
        (dense_model, {"classes": {"rows": 2}}, "grow.classes.rows: layer 'classes' is fed by 'trunk' (Dense), not by a model input, so its input cannot grow alone; grow the units of 'trunk' instead"),
        (_flattened, {"h": {"units": 1}}, "grow.h: layer 'flatten' (Flatten) cannot follow the 1 new features of 'h': splitnet grows through"),
        (_normalized, {"h": {"units": 1}}, "grow.h: layer 'norm' (LayerNormalization) cannot follow the 1 new features of 'h'"),
        (partial(_hidden, "softmax"), {"h": {"units": 1}}, "grow.h: layer 'out' (Dense) cannot follow the 1 new features of 'h': 'h' applies a softmax over its units, so its old features change"),
        (_residual, {"h": {"units": 1}}, "grow.h: layer 'add' (Add) cannot follow the 1 new features of 'h': its other inputs do not grow alike"),
        (_concatenated_first, {"h": {"units": 1}}, "grow.h: layer 'concatenate' (Concatenate) cannot follow the 1 new features of 'h': only its last input may grow"),
        (_heads_then_dense, {"query": {"units": 1}}, "grow.query: layer 'out' (Dense) cannot follow the 1 new features of 'query': they are not the last axis of the output of 'query' (its features)"),
        (_shared_by_two_inputs, {"shared": {"rows": 1}}, "grow.shared: layer 'shared' is called at several places, on inputs that grow differently"),
        (_shared_by_grown_and_plain, {"pa": {"units": 1}}, "grow.pa: layer 'shared' is called at several places, on inputs that grow differently"),
        (_own_output, {"sq": {"units": 1}}, "grow.sq: layer 'sq' is called at several places, on inputs that grow differently"),
        (_nested_twice, {"encoder/proj": {"rows": 1}}, "grow.encoder/proj: model 'encoder' is called at several places, on inputs that grow differently"),
        (_rescaled, {"h": {"units": 1}}, "grow.h: layer 'scale' (Rescaling) cannot follow the 1 new features of 'h': its scale or offset has an entry per feature"),
        (partial(_hidden, "sparsemax"), {"h": {"units": 1}}, "grow.h: layer 'out' (Dense) cannot follow the 1 new features of 'h': 'h' applies a softmax over its units"),
        (_pool_channels_first, {"h": {"units": 1}}, "grow.h: layer 'pool' (GlobalAveragePooling1D) cannot follow the 1 new features of 'h': its data_format is channels_first"),
        (_heads_then_pool, {"query": {"units": 1}}, "grow.query: layer 'pool' (GlobalAveragePooling2D) cannot follow the 1 new features of 'query': they are not the last axis"),
        (_trailing_ellipsis, {"e": {"rows": 1}}, "grow.e.rows: layer 'e': its rows are not the last axis of its input"),
        (_grouped_follower, {"c1": {"units": 2}}, "grow.c1: layer 'grouped' is a Conv1D with groups=2"),
        (_attention, {"attn/query": {"units": 1}}, "grow.attn/query: layer 'attn/query' is made by its parent's code, so its size comes from the parent's arguments"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_refusals(build, grow, message):
    base = build()
    with pytest.raises(SpecError) as info:
        splitnet.grow_model(base, grow)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("grow", [{"classes": {"units": 1}}, {"trunk": {"units": 1}}])
def test_a_model_with_split_layers_is_refused(grow):
    split = splitnet.split_model(perturb(dense_model()), {"classes": {"units": [0]}})
    with pytest.raises(SpecError, match=r"^grow\.\w+: layer 'classes' is split; merge the model before growing it$"):
        splitnet.grow_model(split, grow)


def test_new_features_through_a_concatenate_come_from_its_last_input():
    inner_in = keras.Input((6,), name="inner_in")
    encoder = keras.Model(inner_in, keras.layers.Dense(5, name="proj")(inner_in), name="encoder")
    a, b = keras.Input((6,), name="a"), keras.Input((3,), name="b")
    h = keras.layers.Concatenate()([encoder(a), b])
    base = perturb(keras.Model([a, b], keras.layers.Dense(4, name="classes")(h)))
    grown = splitnet.grow_model(base, {"classes": {"rows": 2}})
    assert [tuple(i.shape) for i in grown.inputs] == [(None, 6), (None, 5)]
    x = [_floats((3, 6)), _floats((3, 3), seed=2)]
    np.testing.assert_array_equal(grown([x[0], _pad(x[1], 2)]), base(x))


def test_embedding_with_new_tokens_and_dimensions_pads_old_tokens_with_zeros():
    base = perturb(embedding_model())
    grown = splitnet.grow_model(base, {"tokens": {"rows": 3, "units": 2}})
    table = splitnet.merged_weights(grown)["tokens"][0]
    assert table.shape == (33, 10)
    np.testing.assert_array_equal(table[:30, 8:], 0.0)  # old tokens: frozen, zero in the new dimensions
    assert np.std(table[30:]) > 0  # new tokens: from the initializer
    mask = splitnet.frozen_masks(grown)["tokens"]["embeddings"]
    assert mask[:30].all() and not mask[30:].any()
    x = _ids((4, 7), 30)
    np.testing.assert_array_equal(grown(x), base(x))


def test_keras_hub_task_grows_its_backbone_vocabulary_by_a_short_name():
    import keras_hub

    backbone = perturb(keras_hub.models.GPT2Backbone(
        vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=8
    ))
    lm = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
    grown = splitnet.grow_model(lm, {"token_embedding": {"rows": 3, "init": "zeros"}}, freeze={"token_embedding": {"rows": ":10"}})
    layer = grown.backbone.token_embedding
    assert type(grown) is type(lm) and plan_of(layer).grown_from == (40, 16) and plan_of(layer).frozen_rows == tuple(range(10))
    np.testing.assert_array_equal(splitnet.merged_weights(grown)["gpt2_backbone/token_embedding"][0][40:], 0.0)  # init: zeros
    x = {"token_ids": _ids((2, 8), 40), "padding_mask": np.ones((2, 8), "int32")}
    # The tied head multiplies by a table of 43 tokens instead of 40: blocked differently
    # by the CPU's matmul, so float32 rounding (README, Grow).
    np.testing.assert_allclose(np.asarray(grown(x))[..., :40], np.asarray(lm(x)), rtol=1e-5, atol=1e-6)


# --- keras-hub: new tokens in a backbone's vocabulary ----------------------------------


def _hub_backbone(name):
    import keras_hub
    common = dict(vocabulary_size=40, num_layers=1, hidden_dim=16, intermediate_dim=32)
    if name == "bert":
        model = keras_hub.models.BertBackbone(num_heads=2, max_sequence_length=8, **common)
        inputs = {"segment_ids": np.zeros((2, 8), "int32")}
    elif name == "gpt2":
        model = keras_hub.models.GPT2Backbone(num_heads=2, max_sequence_length=8, **common)
        inputs = {}
    else:
        model = keras_hub.models.GemmaBackbone(num_query_heads=2, num_key_value_heads=2, head_dim=8, **common)
        inputs = {}
    inputs.update(token_ids=_ids((2, 8), 40), padding_mask=np.ones((2, 8), "int32"))
    return perturb(model), inputs


@pytest.mark.parametrize("name", ["bert", "gpt2", "gemma"])
def test_keras_hub_backbone_gets_new_tokens(name):
    base, inputs = _hub_backbone(name)
    grown = splitnet.grow_model(base, {"token_embedding": {"rows": 5, "init": "mean"}})
    assert type(grown) is type(base) and grown.get_config()["vocabulary_size"] == 45
    before, after = base(inputs), grown(inputs)
    for key in before if isinstance(before, dict) else [None]:
        old, new = (before, after) if key is None else (before[key], after[key])
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
    table = np.asarray(splitnet.merged_weights(grown)["token_embedding"][0])
    np.testing.assert_allclose(table[40:], np.broadcast_to(table[:40].mean(0), (5, 16)), rtol=1e-5, atol=1e-6)
    grown.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.5), loss="mse")
    x = dict(inputs, token_ids=_ids((8, 8), 45, seed=3), padding_mask=np.ones((8, 8), "int32"))
    if "segment_ids" in x:
        x["segment_ids"] = np.zeros((8, 8), "int32")
    y = keras.tree.map_structure(lambda t: np.asarray(t) + 1.0, grown(x))
    grown.fit(x, y, epochs=1, batch_size=4, verbose=0)
    check = splitnet.verify(base, grown)
    assert check.changed == 0 and "token_embedding" in check.grown and check.new == 5 * 16
    merged = splitnet.merge_model(grown)
    assert type(merged) is type(base) and merged.get_config()["vocabulary_size"] == 45


def test_grown_model_exports_and_loads_without_splitnet(tmp_path):
    import os
    import subprocess
    import sys

    from test_export import RELOAD_WITHOUT_SPLITNET

    base = perturb(dense_model())
    grown = splitnet.grow_model(base, {"trunk": {"rows": 4}, "classes": {"units": 3}})
    merged, diff = splitnet.export_saved_model(grown, tmp_path / "export")
    assert diff <= 1e-6 and merged.inputs[0].name == "features" and tuple(merged.inputs[0].shape) == (None, 16)
    x = _floats((6, 16))
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [sys.executable, "-c", RELOAD_WITHOUT_SPLITNET, str(tmp_path / "export"), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    y = np.load(tmp_path / "y.npy")
    assert y.shape == (6, 8)
    np.testing.assert_allclose(y, grown.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grow", [None, {}])
def test_empty_grow_is_refused(grow):
    with pytest.raises(SpecError, match="^grow: nothing to grow; give layer name -> units and/or rows to add$"):
        splitnet.load_spec({"model": {"input_shape": [2], "layers": [{"type": "Dense", "units": 1}]}, "grow": grow})


def test_verify_with_base_and_grown_swapped_says_so():
    base = perturb(dense_model())
    grown = splitnet.grow_model(base, {"classes": {"units": 2}})
    with pytest.raises(splitnet.errors.InputError, match="give the base model first, then the grown one$"):
        splitnet.verify(grown, base)
