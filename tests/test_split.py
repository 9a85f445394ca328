"""Split models: same function, right masks, frozen entries exact under training."""

import json

import keras
import tensorflow as tf
import numpy as np
import pytest
from conftest import CASES, IN_DIM, OUT, UNITS, assert_same_function, case_params, data, is_split, make_model, perturb

import splitnet
from splitnet import SplitDense


# Without a bias, `bias: true` is an error (test_bias_on_layer_without_bias): drop it.
SAME_FUNCTION = [pytest.param(c.rule, True, id=f"bias-{c.id}") for c in CASES] + [
    pytest.param({k: v for k, v in c.rule.items() if k != "bias"}, False, id=f"nobias-{c.id}")
    for c in CASES
    if set(c.rule) != {"bias"}
]


@pytest.mark.parametrize("rule, use_bias", SAME_FUNCTION)
def test_split_computes_the_same_function(rule, use_bias):
    model = make_model(use_bias=use_bias)
    split = splitnet.split_model(model, {"d": rule})
    x, _ = data()
    assert_same_function(split.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("case", case_params())
def test_masks_and_weights_agree_with_the_rule(case):
    model = make_model()
    split = splitnet.split_model(model, {"d": case.rule})
    kernel, bias = case.masks()
    masks = splitnet.frozen_masks(split)
    assert set(masks) == {"d"}
    np.testing.assert_array_equal(masks["d"]["kernel"], kernel)
    np.testing.assert_array_equal(masks["d"]["bias"], bias)
    # The pieces hold exactly the original weights, each entry once.
    original = model.get_layer("d").get_weights()
    for got, want in zip(splitnet.merged_weights(split)["d"], original):
        np.testing.assert_array_equal(got, want)
    trainable = sum(int(np.prod(w.shape)) for w in split.trainable_weights)
    out_params = (UNITS + 1) * OUT
    assert trainable == (~kernel).sum() + (~bias).sum() + out_params


def _optimizers():
    return {
        "adamw": lambda: keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.05),
        "sgd": lambda: keras.optimizers.SGD(learning_rate=0.01, momentum=0.9, nesterov=True, weight_decay=0.05),
    }


def _fit_and_check(case, optimizer, regularizer=None, epochs=2):
    model = make_model(kernel_regularizer=regularizer)
    before = [w.copy() for w in model.get_layer("d").get_weights()]
    split = splitnet.split_model(model, {"d": case.rule})
    split.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    x, y = data(128)
    split.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    after = splitnet.merged_weights(split)["d"]
    kernel_mask, bias_mask = case.masks()
    for mask, old, new in zip((kernel_mask, bias_mask), before, after):
        np.testing.assert_array_equal(new[mask], old[mask])  # frozen: bit-identical
    # Weight decay / L2 moves every trainable kernel entry.
    assert (after[0] != before[0])[~kernel_mask].all()
    if (~bias_mask).any():
        assert (after[1] != before[1])[~bias_mask].any()
    # The input model is untouched.
    for old, now in zip(before, model.get_layer("d").get_weights()):
        np.testing.assert_array_equal(old, now)


TRAINABLE_CASES = [c for c in CASES if c.id not in ("units-all", "rows-all-and-bias")]


@pytest.mark.parametrize("case", case_params(TRAINABLE_CASES))
def test_adamw_weight_decay_keeps_frozen_entries(case):
    _fit_and_check(case, _optimizers()["adamw"]())


@pytest.mark.parametrize("case", case_params([CASES[0], CASES[2], CASES[5], CASES[10]]))
def test_sgd_nesterov_weight_decay_keeps_frozen_entries(case):
    _fit_and_check(case, _optimizers()["sgd"]())


@pytest.mark.parametrize("case", case_params([CASES[0], CASES[7], CASES[10]]))
def test_l2_regularizer_keeps_frozen_entries(case):
    _fit_and_check(case, keras.optimizers.SGD(learning_rate=0.05), regularizer=keras.regularizers.L2(0.1))


def test_layer_frozen_whole_stays_exact():
    model = make_model()
    split = splitnet.split_model(model, {"d": {"units": "all"}})
    layer = split.get_layer("d")
    assert is_split(layer) and layer.trainable_weights == []
    split.compile(optimizer=_optimizers()["adamw"](), loss="sparse_categorical_crossentropy")
    split.fit(*data(64), epochs=1, verbose=0)
    for old, new in zip(model.get_layer("d").get_weights(), split.get_layer("d").get_weights()):
        np.testing.assert_array_equal(old, new)


def _slot_floats(optimizer):
    """Floats of the per-entry slots (the iteration count and learning rate are scalars)."""
    return sum(int(np.prod(v.shape)) for v in optimizer.variables if len(v.shape))


def test_optimizer_state_only_for_trainable_entries():
    model = make_model()
    split = splitnet.split_model(model, {"d": {"units": "0:30", "rows": [0, 1]}, "out": {"units": [0]}})
    states = {}
    for name, m in (("unsplit", model), ("split", split)):
        opt = keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.01)
        opt.build(m.trainable_variables)
        trainable = sum(int(np.prod(w.shape)) for w in m.trainable_weights)
        states[name] = _slot_floats(opt)
        assert states[name] == 2 * trainable  # m and v per trainable entry, nothing more
    masks = splitnet.frozen_masks(split)
    frozen = sum(int(v.sum()) for m in masks.values() for v in m.values())
    assert states["unsplit"] - states["split"] == 2 * frozen


def test_activation_applied_once_after_join():
    inputs = keras.Input((IN_DIM,))
    model = perturb(keras.Model(inputs, keras.layers.Dense(9, activation="softmax", name="head")(inputs)))
    split = splitnet.split_model(model, {"head": {"units": [0, 4, 8]}})
    x, _ = data()
    out = split.predict(x, verbose=0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-6)
    assert_same_function(out, model.predict(x, verbose=0))


@pytest.mark.parametrize("case", case_params([CASES[0], CASES[2], CASES[10]]))
def test_rank3_inputs(case):
    shape = (7, IN_DIM)
    model = make_model(input_shape=shape)
    split = splitnet.split_model(model, {"d": case.rule})
    x, y = data(32, input_shape=shape)
    assert_same_function(split.predict(x, verbose=0), model.predict(x, verbose=0))
    split.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    split.fit(x, y, epochs=1, verbose=0)
    kernel_mask, _ = case.masks()
    np.testing.assert_array_equal(
        splitnet.merged_weights(split)["d"][0][kernel_mask], model.get_layer("d").get_weights()[0][kernel_mask]
    )


@pytest.fixture
def mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("case", case_params([CASES[0], CASES[2], CASES[10]]))
def test_mixed_float16(mixed_precision, case):
    model = make_model()
    split = splitnet.split_model(model, {"d": case.rule})
    assert split.get_layer("d").compute_dtype == "float16"
    x, y = data(64)
    a, b = split.predict(x, verbose=0), model.predict(x, verbose=0)
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3)
    before = model.get_layer("d").get_weights()
    split.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    # Dynamic loss scaling skips the first steps (overflow), so take enough.
    split.fit(x, y, epochs=2, batch_size=4, verbose=0)
    after = splitnet.merged_weights(split)["d"]
    assert after[0].dtype == np.float32  # variables stay float32 under the mixed policy
    kernel_mask, bias_mask = case.masks()
    np.testing.assert_array_equal(after[0][kernel_mask], before[0][kernel_mask])
    np.testing.assert_array_equal(after[1][bias_mask], before[1][bias_mask])
    assert (after[0] != before[0])[~kernel_mask].any()


def test_save_and_load_keeps_groups(tmp_path):
    model = make_model()
    split = splitnet.split_model(model, {"d": {"units": [0, 1, "8:16", -1], "rows": "0:3"}, "out": {"units": "all"}})
    perturb(split, seed=5)
    path = tmp_path / "split.keras"
    split.save(path)
    loaded = keras.saving.load_model(path)  # default safe_mode=True: no Lambda anywhere
    x, _ = data()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), split.predict(x, verbose=0))
    assert is_split(loaded.get_layer("d"))
    # (A loaded model's configs have lists where a built one's have tuples.)
    assert json.dumps(loaded.get_layer("d").get_config()) == json.dumps(split.get_layer("d").get_config())
    for key, masks in splitnet.frozen_masks(split).items():
        for kind, mask in masks.items():
            np.testing.assert_array_equal(splitnet.frozen_masks(loaded)[key][kind], mask)
    for key, weights in splitnet.merged_weights(split).items():
        for a, b in zip(splitnet.merged_weights(loaded)[key], weights):
            np.testing.assert_array_equal(a, b)
    assert len(loaded.trainable_weights) == len(split.trainable_weights)


def test_trainable_true_does_not_unfreeze():
    split = splitnet.split_model(make_model(), {"d": {"units": "0:10"}, "out": {"units": "all"}}, form="in_place")
    count = len(split.trainable_weights)
    split.trainable = True
    assert len(split.trainable_weights) == count
    assert [v.name for v in split.get_layer("d").non_trainable_weights] == ["frozen_kernel", "frozen_bias"]
    assert split.get_layer("out").trainable_weights == []


def test_sequential_model():
    model = perturb(
        keras.Sequential([keras.Input((IN_DIM,)), keras.layers.Dense(UNITS, name="d"), keras.layers.Dense(OUT, name="out")])
    )
    split = splitnet.split_model(model, {"d": {"units": "0:4"}})
    x, _ = data()
    assert_same_function(split.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize(
    "freeze, message",
    [
        ({"zz": {"units": [0]}}, "freeze.zz: no layer 'zz' in model 'net'"),
        ({"dd": {"units": [0]}}, "did you mean 'd'?"),
        ({"d": {"units": [40]}}, "freeze.d.units[0]: 40 is out of range, layer 'd' has 40 units"),
        ({"d": {"units": [-41]}}, "freeze.d.units[0]: -41 is out of range"),
        ({"d": {"rows": "0:13"}}, "freeze.d.rows: range '0:13': 13 is out of range, layer 'd' has 12 input rows"),
        ({"d": {"units": "5:2"}}, "freeze.d.units: range '5:2' is reversed"),
        ({"d": {"units": "-1:-3"}}, "reversed"),
        ({"d": {"units": "3:3"}}, "range '3:3' is empty"),
        ({"d": {"units": ["0:4", 2]}}, "freeze.d.units[1]: '2' overlaps '0:4' (both include 2)"),
        ({"d": {"units": []}}, "freeze.d.units: empty list"),
        ({"d": {"units": [True]}}, "freeze.d.units[0]: True is not an index"),
        ({"d": {"unit": [0]}}, "freeze.d.unit: unknown key 'unit'; did you mean 'units'?"),
        ({"d": {"bias": "yes"}}, "freeze.d.bias: expected true or false"),
        ({"d": {}}, "nothing to freeze"),
    ],
)
def test_freeze_errors(freeze, message):
    with pytest.raises(splitnet.SpecError) as info:
        splitnet.split_model(make_model(), freeze)
    assert message in str(info.value)
    assert str(info.value).startswith("freeze.")


def test_bias_on_layer_without_bias():
    with pytest.raises(splitnet.SpecError, match=r"freeze.d.bias: layer 'd' has no bias \(use_bias=False\)"):
        splitnet.split_model(make_model(use_bias=False), {"d": {"bias": True}})


def test_non_dense_layer_is_refused():
    inputs = keras.Input((IN_DIM,))
    h = keras.layers.Dense(UNITS, name="d")(inputs)
    model = keras.Model(inputs, keras.layers.Dropout(0.1, name="drop")(h))
    with pytest.raises(splitnet.SpecError, match="freeze.drop: layer 'drop' is of type Dropout; splitnet splits Dense, EinsumDense, Conv1D, Conv2D, Conv3D, Embedding, ReversibleEmbedding layers"):
        splitnet.split_model(model, {"drop": {"units": [0]}})


def test_kernel_constraint_on_row_split_is_refused():
    model = make_model(kernel_constraint=keras.constraints.MaxNorm(2.0))
    with pytest.raises(splitnet.SpecError, match="freeze.d.rows: layer 'd' has a kernel_constraint"):
        splitnet.split_model(model, {"d": {"rows": [0]}})
    # Per-unit constraints are fine for unit splits.
    splitnet.split_model(model, {"d": {"units": [0]}})


def test_subclassed_model():
    class Net(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.d = keras.layers.Dense(UNITS, activation="relu", name="d")
            self.out = keras.layers.Dense(OUT, name="out")

        def call(self, x):
            return self.out(self.d(x))

    net = Net(name="net")
    x, y = data()
    net(x)
    perturb(net)
    before = [w.copy() for w in net.get_layer("d").get_weights()]
    with keras.saving.custom_object_scope({"Net": Net}):
        split = splitnet.split_model(net, {"d": {"units": "0:10"}})
    assert type(split) is Net and isinstance(split.d, SplitDense)
    assert_same_function(np.asarray(split(x)), np.asarray(net(x)))
    split.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.1), loss="mse")
    split.fit(x, np.zeros((len(x), OUT)), epochs=1, verbose=0)
    after = splitnet.merged_weights(split)["d"]
    np.testing.assert_array_equal(after[0][:, :10], before[0][:, :10])
    assert (after[0][:, 10:] != before[0][:, 10:]).all()
    merged = splitnet.merge_model(split)
    assert type(merged) is Net and type(merged.d) is keras.layers.Dense
    assert_same_function(np.asarray(merged(x)), np.asarray(split(x)))


def test_masks_follow_what_actually_trains():
    split = splitnet.split_model(make_model(), {"d": {"units": "0:10"}})
    assert not splitnet.frozen_masks(split)["d"]["kernel"][:, 10:].any()
    split.get_layer("d").trainable = False  # now nothing of "d" trains
    masks = splitnet.frozen_masks(split)["d"]
    assert masks["kernel"].all() and masks["bias"].all()
    split.get_layer("d").trainable = True  # back to the plan: the frozen piece stays frozen
    masks = splitnet.frozen_masks(split)["d"]
    assert masks["kernel"][:, :10].all() and not masks["kernel"][:, 10:].any()
    split.trainable = False  # a parent frozen freezes everything under it
    assert splitnet.frozen_masks(split)["out"]["kernel"].all()


def test_shape_dependent_initializer():
    value = np.arange(IN_DIM * UNITS, dtype="float32").reshape(IN_DIM, UNITS)
    model = make_model(kernel_initializer=keras.initializers.Constant(value))
    split = splitnet.split_model(model, {"d": {"units": [0, 5], "rows": [1]}})
    x, _ = data()
    assert_same_function(split.predict(x, verbose=0), model.predict(x, verbose=0))
    merged = splitnet.merge_model(split)
    assert merged.get_layer("d").get_config() == model.get_layer("d").get_config()


def test_a_split_layer_cannot_be_split_again_but_others_can():
    split = splitnet.split_model(make_model(), {"d": {"units": "0:10"}})
    with pytest.raises(splitnet.SpecError, match="freeze.d: layer 'd' is already split; merge the model first"):
        splitnet.split_model(split, {"d": {"units": [0]}})
    twice = splitnet.split_model(split, {"out": {"units": [0]}})
    assert set(splitnet.frozen_masks(twice)) == {"d", "out"}
    np.testing.assert_array_equal(splitnet.frozen_masks(twice)["d"]["kernel"], splitnet.frozen_masks(split)["d"]["kernel"])


def test_gradients_match_the_plain_model_everywhere():
    """Every trainable entry gets the plain model's gradient, and so do the inputs and
    the layers around the split ones (which an optimisation that cut the gradient
    towards frozen units got wrong when a trainable layer fed them)."""
    inputs = keras.Input((8,), name="x")
    h = keras.layers.Dense(24, activation="tanh", name="emb")(inputs)
    inner_in = keras.Input((24,))
    inner = keras.layers.Dense(24, activation="relu", name="dst")(keras.layers.Dense(24, activation="relu", name="src")(inner_in))
    enc = keras.Model(inner_in, inner, name="enc")
    model = perturb(keras.Model(inputs, keras.layers.Dense(3, name="out")(enc(h))))
    split = splitnet.split_model(model, {"enc/src": {"units": "0:12"}, "enc/dst": {"units": [0, 5]}}, form="in_place")
    x = tf.constant(data(16, input_shape=(8,))[0])

    def grads(m):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(m(x, training=True)))
        variables = m.trainable_variables
        values = tape.gradient(loss, [x] + variables)
        return values[0], {id(v): g for v, g in zip(variables, values[1:])}

    dx_full, full = grads(model)
    dx_split, parts = grads(split)
    np.testing.assert_allclose(dx_split, dx_full, rtol=1e-4, atol=1e-5)
    for name in ("emb", "out"):  # plain layers around the split ones
        np.testing.assert_allclose(parts[id(split.get_layer(name).kernel)], full[id(model.get_layer(name).kernel)], rtol=1e-4, atol=1e-5)
    for name in ("src", "dst"):
        want = np.asarray(full[id(model.get_layer("enc").get_layer(name).kernel)])
        for kernel_mask, _, variables in split.get_layer("enc").get_layer(name).piece_variables():
            if id(variables[0]) in parts:  # a trainable kernel piece
                np.testing.assert_allclose(np.asarray(parts[id(variables[0])]).ravel(), want[kernel_mask].ravel(), rtol=1e-4, atol=1e-5)


def test_compiled_model_splits_ready_to_fit():
    model = make_model()
    model.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.1), loss="sparse_categorical_crossentropy")
    split = splitnet.split_model(model, {"d": {"units": "0:10"}})
    assert split.optimizer is not model.optimizer
    split.fit(*data(32), epochs=1, verbose=0)  # no second compile needed
    slots = sum(int(np.prod(v.shape)) for v in split.optimizer.variables if len(v.shape))
    assert slots == 2 * sum(int(np.prod(w.shape)) for w in split.trainable_weights)
    np.testing.assert_array_equal(splitnet.merged_weights(split)["d"][0][:, :10], model.get_layer("d").get_weights()[0][:, :10])


def test_tied_weights_read_through_kernel():
    """A layer whose Python code reads another layer's `kernel` (tied weights) keeps working."""

    @keras.saving.register_keras_serializable(package="tests_split")
    class TiedAutoencoder(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.enc = keras.layers.Dense(5, name="enc")

        def call(self, x):
            return keras.ops.matmul(self.enc(x), keras.ops.transpose(self.enc.kernel))

    inputs = keras.Input((IN_DIM,), name="x")
    model = perturb(keras.Model(inputs, TiedAutoencoder(name="ae")(inputs)))
    split = splitnet.split_model(model, {"ae/enc": {"units": [0, 3], "rows": [2]}})
    x, _ = data()
    assert_same_function(split.predict(x, verbose=0), model.predict(x, verbose=0))
    layer = split.get_layer("ae").enc
    np.testing.assert_array_equal(np.asarray(layer.kernel), model.get_layer("ae").enc.get_weights()[0])
    np.testing.assert_array_equal(np.asarray(layer.bias), model.get_layer("ae").enc.get_weights()[1])
    split.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.1), loss="mse")
    split.fit(x, x, epochs=1, verbose=0)  # the kernel read in `call` is differentiable
    masks = splitnet.frozen_masks(split)["ae/enc"]
    after = splitnet.merged_weights(split)["ae/enc"][0]
    np.testing.assert_array_equal(after[masks["kernel"]], model.get_layer("ae").enc.get_weights()[0][masks["kernel"]])
    assert (after != model.get_layer("ae").enc.get_weights()[0])[~masks["kernel"]].all()


def test_per_unit_constraint_keeps_its_meaning_after_a_split_producer():
    # Issue 9, item 5: a consumer with MaxNorm and frozen units, fed by a split producer.
    inputs = keras.Input((24,), name="x")
    h = keras.layers.Dense(24, activation="relu", name="l0")(inputs)
    out = keras.layers.Dense(8, name="l1", kernel_constraint=keras.constraints.MaxNorm(0.5))(h)
    model = perturb(keras.Model(inputs, out))
    split = splitnet.split_model(model, {"l0": {"units": "0:12"}, "l1": {"units": [0]}}, form="in_place")
    assert all(piece.rows is None for piece in split.get_layer("l1").plan.pieces)  # columns only
    split.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    x, _ = data(64, input_shape=(24,))
    split.fit(x, np.full((64, 8), 5.0, "float32"), epochs=3, verbose=0)
    kernel = splitnet.merged_weights(split)["l1"][0]
    assert np.linalg.norm(kernel[:, 1:], axis=0).max() <= 0.5 + 1e-6
