"""The registered layers: complete configs, correct values and gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from splitnet import layers
from splitnet.plan import DensePlan


def _join(frozen, units=40):
    plan = DensePlan("d", 3, units, True, tuple(frozen), (), False)
    return layers.SplitJoin(plan, keras.layers.Dense(units, name="d", activation="tanh").get_config()), plan


@pytest.mark.parametrize(
    "layer",
    [
        layers.FrozenDense(3, name="f"),
        layers.Bias(bias_initializer="ones", bias_regularizer="l2", name="b"),
        layers.FrozenBias(name="fb"),
        layers.SelectFeatures([0, 1, 2, 7], name="s"),
        _join((0, 5, 6))[0],
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_get_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


def test_frozen_layers_stay_frozen():
    for layer in (layers.FrozenDense(3), layers.FrozenBias()):
        layer.build((None, 4))
        layer.trainable = True
        assert not layer.trainable and layer.trainable_weights == []


@pytest.mark.parametrize("frozen", [(0, 5, 6), tuple(range(0, 40, 2)), (39,), tuple(range(10, 40))], ids=["slices", "gather", "last", "tail"])
def test_join_values_and_gradient(frozen):
    join, plan = _join(frozen)
    rng = np.random.default_rng(0)
    full = rng.normal(size=(4, plan.units)).astype("float32")
    t = tf.constant(full[:, list(plan.trainable_units)])
    f = tf.constant(full[:, list(plan.frozen_units)])
    with tf.GradientTape() as tape:
        tape.watch([t, f])
        out = join([t, f])
        weights = tf.constant(rng.normal(size=(4, plan.units)).astype("float32"))
        loss = tf.reduce_sum(out * weights)
    np.testing.assert_array_equal(out.numpy(), tf.tanh(full).numpy())  # join itself is exact
    dt, df = tape.gradient(loss, [t, f])
    # Reference: the same loss on the unsplit columns. Reordering only moves
    # values, so the gradient pieces are exactly the reference's columns.
    full_t = tf.constant(full)
    with tf.GradientTape() as tape:
        tape.watch(full_t)
        reference = tf.reduce_sum(tf.tanh(full_t) * weights)
    expected = tape.gradient(reference, full_t).numpy()
    np.testing.assert_array_equal(dt.numpy(), expected[:, list(plan.trainable_units)])
    np.testing.assert_array_equal(df.numpy(), expected[:, list(plan.frozen_units)])


@pytest.mark.parametrize("indices", [[2, 3, 4], [0, 5, 9], list(range(0, 40, 2))])
def test_select_features(indices):
    x = np.arange(2 * 3 * 40, dtype="float32").reshape(2, 3, 40)
    out = layers.SelectFeatures(indices)(x)
    np.testing.assert_array_equal(np.asarray(out), x[..., indices])
