"""Put split groups back into plain Dense layers: `merge_model`, `merged_weights`.

The mirror of `split.py`: one `clone_model` call in which every layer of a
group but the join passes its input through unchanged, and the join (which
has the original name and config) becomes the original Dense again, with
weights reassembled by the same `DensePlan` that split them.
"""

from __future__ import annotations

import keras
import numpy as np

from splitnet.errors import SplitnetError
from splitnet.layers import FrozenDense
from splitnet.split import ModelError, _as_functional, find_groups, walk_layers


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
    out, skip = {}, set()
    for key, join, layers in find_groups(model):
        out[key] = _group_weights(join, layers)
        prefix = key[: len(key) - len(join.name)]
        skip |= {prefix + layer.name for layer in layers.values()}
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
    groups = {}  # id(join) -> (join, layers)
    passthrough = set()
    for _, join, layers in find_groups(model):
        groups[id(join)] = (join, layers)
        passthrough |= {id(layer) for layer in layers.values()}
    copies, merged = [], {}

    def clone_function(layer):
        if id(layer) in groups or id(layer) in passthrough:
            return layer  # replaced at call time
        config = layer.get_config()
        if isinstance(layer, FrozenDense):  # frozen whole by splitnet: a Dense again
            new = keras.layers.Dense.from_config({**config, "trainable": True})
        else:
            new = layer.__class__.from_config(config)
        copies.append((layer, new))
        return new

    def call_function(layer, *args, **kwargs):
        if id(layer) not in groups and id(layer) not in passthrough:
            return layer(*args, **kwargs)
        # Every layer of a group sees the group's input, so passing it through
        # leaves the join holding the original Dense's input.
        x = args[0]
        x = x[0] if isinstance(x, (list, tuple)) else x
        if id(layer) in passthrough:
            return x
        if id(layer) not in merged:
            join, layers = groups[id(layer)]
            dense = keras.layers.Dense.from_config(join.dense_config)
            merged[id(layer)] = (dense, _group_weights(join, layers))
        return merged[id(layer)][0](x)

    try:
        new_model = keras.models.clone_model(
            _as_functional(model), clone_function=clone_function, call_function=call_function, recursive=True
        )
    except SplitnetError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot merge model {model.name!r}: {exc}") from exc
    for old, new in copies:
        new.set_weights(old.get_weights())
    for dense, weights in merged.values():
        dense.set_weights(weights)
    return new_model
