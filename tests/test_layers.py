"""The split layer itself: complete config, same values and gradients as the plain layer."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import splitnet
from splitnet.kinds.dense import SplitDense
from splitnet.plan import KernelPlan


def _pair(frozen_units=(), frozen_rows=(), bias=False, activation="tanh", units=40, in_dim=6):
    """A plain Dense and a SplitDense of it, with random weights."""
    rng = np.random.default_rng(0)
    plain = keras.layers.Dense(units, activation=activation, name="d")
    plain.build((None, in_dim))
    plain.set_weights([rng.normal(size=(in_dim, units)).astype("float32"), rng.normal(size=(units,)).astype("float32")])
    plan = KernelPlan(in_dim, units, True, tuple(frozen_units), tuple(frozen_rows), bias)
    split = SplitDense.from_config({**plain.get_config(), "split": plan.get_config()})
    split.build((None, in_dim))
    split.assign_merged(*plain.get_weights())
    return plain, split


def test_get_config_round_trip():
    _, layer = _pair((0, 5, 6), (1,))
    config = layer.get_config()
    assert SplitDense.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is SplitDense and restored.get_config() == config
    # The plain layer's config is all there, plus the split.
    assert {k: v for k, v in config.items() if k != "split"} == keras.layers.Dense(40, activation="tanh", name="d").get_config()


def test_frozen_pieces_stay_frozen_whatever_trainable_says():
    _, layer = _pair((0, 1), (2,))
    trainable = len(layer.trainable_weights)
    layer.trainable = False
    assert layer.trainable_weights == []
    layer.trainable = True
    assert len(layer.trainable_weights) == trainable  # the frozen pieces did not join in
    assert all(not v.trainable for v in layer.non_trainable_weights)


@pytest.mark.parametrize(
    "frozen_units, frozen_rows, bias",
    [((0, 5, 6), (), False), (tuple(range(0, 40, 2)), (), False), ((39,), (1, 4), True), (tuple(range(10, 40)), (), True), ((), (0, 1, 2, 3, 4, 5), False)],
    ids=["slices", "gather", "last-and-rows", "tail-bias", "all-rows"],
)
def test_values_and_gradients_match_the_plain_layer(frozen_units, frozen_rows, bias):
    plain, split = _pair(frozen_units, frozen_rows, bias)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(4, 6)).astype("float32"))
    weights = tf.constant(rng.normal(size=(4, 40)).astype("float32"))

    def grads(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x)
            loss = tf.reduce_sum(out * weights)
        return out, tape.gradient(loss, [x] + layer.trainable_weights)

    out_plain, (dx_plain, dk, db) = grads(plain)
    out_split, (dx_split, *piece_grads) = grads(split)
    np.testing.assert_allclose(out_split, out_plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx_split, dx_plain, rtol=1e-5, atol=1e-5)
    # Each trainable variable's gradient is the plain gradient at the entries it holds.
    by_variable = {id(v): g for v, g in zip(split.trainable_weights, piece_grads)}
    for kernel_mask, bias_mask, variables in split.piece_variables():
        for variable in variables:
            if id(variable) not in by_variable:
                continue
            grad = np.asarray(by_variable[id(variable)])
            if len(variable.shape) == 1:  # a bias piece
                np.testing.assert_allclose(grad, np.asarray(db)[bias_mask], rtol=1e-5, atol=1e-5)
            else:
                np.testing.assert_allclose(grad.ravel(), np.asarray(dk)[kernel_mask].ravel(), rtol=1e-5, atol=1e-5)


def test_merged_weights_are_the_plain_weights_bit_for_bit():
    plain, split = _pair((3, 4, 9), (0, 5), True)
    for got, want in zip(split.merged_weights(), plain.get_weights()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(split.kernel), plain.get_weights()[0])


def test_public_name_and_repr():
    _, layer = _pair((0,))
    assert splitnet.SplitDense is SplitDense
    assert repr(layer).startswith("<SplitDense name=d")
    assert keras.saving.get_registered_name(SplitDense) == "splitnet>SplitDense"


def test_reordering_by_row_gather_matches(monkeypatch):
    """The transposed gather used for wide layers gives the same values and gradients."""
    from splitnet.kinds import pieces as dense

    frozen = tuple(range(0, 40, 2))
    plain, reference = _pair(frozen, (1, 3, 4))
    monkeypatch.setattr(dense, "GATHER_ROWS_FROM", 0)
    _, wide = _pair(frozen, (1, 3, 4))
    x = tf.constant(np.random.default_rng(2).normal(size=(5, 6)).astype("float32"))
    for layer in (reference, wide):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(layer(x)))
        grads = tape.gradient(loss, [x] + layer.trainable_weights)
        if layer is reference:
            expected = grads
    for got, want in zip(grads, expected):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


ONEDNN_PROBE = """
import numpy as np, keras, splitnet

def train_and_predict(model):
    model.compile("adam", "mse")
    x = np.random.rand(64, 20).astype("float32")
    model.fit(x, np.random.rand(64, 5).astype("float32"), epochs=1, verbose=0)
    model.predict(x, verbose=0)

# What a row split used to compute: relu(x1 @ W1 + b + x2 @ W2), MatMul + BiasAdd + Add + Relu.
i = keras.Input((20,))
a = keras.layers.Dense(16)(i[:, :10]) + keras.layers.Dense(16, use_bias=False)(i[:, 10:])
train_and_predict(keras.Model(i, keras.layers.Dense(5)(keras.ops.relu(a)), name="control"))

i = keras.Input((20,))
model = keras.Model(i, keras.layers.Dense(5)(keras.layers.Dense(16, activation="relu", name="hidden")(i)), name="split")
for rule in ({"rows": "0:10"}, {"rows": "0:10", "units": "0:4"}, {"rows": [0, 5, 9, 13], "bias": True}):
    train_and_predict(splitnet.split_model(model, {"hidden": rule}))
"""


def test_row_splits_make_no_tensorflow_graph_errors():
    # TensorFlow's oneDNN rewrite of MatMul + BiasAdd + Add + Relu fails and logs
    # "Node .../Relu has an empty op name" errors each time a function is traced. A split
    # Dense adds its bias after summing its row pieces, so the pattern never arises.
    result = subprocess.run(
        [sys.executable, "-c", ONEDNN_PROBE],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    signs = ("empty op name", "Fusion is not implemented", "optimization failure")
    graph_errors = [line for line in result.stderr.splitlines() if any(sign in line for sign in signs)]
    assert not [line for line in graph_errors if "split" in line], graph_errors
    assert not [line for line in graph_errors if "control" not in line], graph_errors
