"""Put split groups back into plain Dense layers: `merge_model`, `merged_weights`.

The mirror of `split.py`: one `clone_model` call in which every layer of a
group but the join passes its input through unchanged, and the join (which
has the original name and config) becomes the original Dense again, with
weights reassembled by the same `DensePlan` that split them.
"""

from __future__ import annotations

import keras
import numpy as np

from splitnet.graph import find_groups, group_member_keys, rewrite, walk_layers
from splitnet.layers import FrozenDense


def _group_weights(join, layers):
    plan = join.plan
    weights = {role: [np.asarray(w) for w in layers[role].get_weights()] for role in layers if layers[role].weights}
    dtype = next(iter(weights.values()))[0].dtype
    return plan.merge_weights(weights, dtype)


def merged_weights(model):
    """The weights every Dense layer of `model` would have after `merge_model`.

    Args:
        model: A split or plain model.

    Returns:
        `{layer_key: [kernel, bias]}` (just `[kernel]` without bias) as numpy
        arrays in the original layer's coordinates, for split groups and
        for every plain Dense layer. Nested layers are keyed `outer/inner`.

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
        >>> split = splitnet.split_model(model, {"d": {"units": [1]}})
        >>> bool((splitnet.merged_weights(split)["d"][0] == model.get_weights()[0]).all())
        True
    """
    out = {key: _group_weights(join, layers) for key, join, layers in find_groups(model)}
    skip = group_member_keys(model)
    for key, layer, _, _ in walk_layers(model):
        if isinstance(layer, keras.layers.Dense) and key not in skip:
            out[key] = [np.asarray(w) for w in layer.get_weights()]
    return out


def merge_model(model):
    """Return a copy of `model` in which every split group is one plain Dense again.

    The result has the original architecture layer for layer: each group
    becomes a `keras.layers.Dense` with the original name and config, and
    layers frozen whole become trainable Dense layers again. Its outputs
    equal the split model's. The input model is not changed.

    Args:
        model: A model from `build_model`/`split_model` (or a `.keras` file
            of one, loaded), or any Functional/Sequential model.

    Returns:
        A new Functional `keras.Model` without splitnet layers.

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
        >>> split = splitnet.split_model(model, {"d": {"units": [1]}})
        >>> merged = splitnet.merge_model(split)
        >>> type(merged.get_layer("d")).__name__, merged.get_layer("d").trainable
        ('Dense', True)
    """
    groups, passthrough = {}, set()
    for _, join, layers in find_groups(model):
        groups[id(join)] = (join, layers)
        passthrough |= {id(layer) for layer in layers.values()}

    def replacement(layer):
        if id(layer) in passthrough:
            # Every layer of a group sees the group's input, so passing it
            # through leaves the join holding the original Dense's input.
            return lambda inputs, *args, **kwargs: _first(inputs)
        if id(layer) in groups:
            join, layers = groups[id(layer)]
            dense = keras.layers.Dense.from_config(join.dense_config)
            return _built_then_set(dense, lambda: _group_weights(join, layers), first_input=True)
        if isinstance(layer, FrozenDense):  # frozen whole by splitnet: a trainable Dense again
            dense = keras.layers.Dense.from_config({**layer.get_config(), "trainable": True})
            return _built_then_set(dense, layer.get_weights)
        return None

    return rewrite(model, replacement)


def _built_then_set(dense, weights, first_input=False):
    """A call that builds `dense` on its first call and fills it with `weights()` right away.

    Filling each layer as soon as it exists keeps one group's arrays in memory
    at a time, not the whole model's (merge peaks below 2.5x the model's bytes).
    """

    filled = False

    def call(inputs, *args, **kwargs):
        nonlocal filled
        outputs = dense(_first(inputs)) if first_input else dense(inputs, *args, **kwargs)
        if not filled:
            dense.set_weights(weights())
            filled = True
        return outputs

    return call


def _first(inputs):
    return inputs[0] if isinstance(inputs, (list, tuple)) else inputs
