"""Put split layers back into plain layers: `merge_model`, `merged_weights`.

The mirror of `split.py`. A split layer already saves the plain layer's
weights (its kind assembles them from the pieces with the same plan that
split them), so merging is Keras' own save and load with the split classes
in the model config replaced by the plain ones (`saving.plain_copy`).
"""

from __future__ import annotations

from splitnet import functional, kinds, saving, tree


def merged_weights(model):
    """The weights every splittable layer of `model` would have after `merge_model`.

    Args:
        model: A split or plain model.

    Returns:
        `{layer_key: [kernel, bias]}` (just `[kernel]` without bias) as numpy
        arrays in the plain layer's coordinates, for split layers and for
        every plain layer of a splittable kind. Nested layers are keyed
        `outer/inner`.

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
        >>> split = splitnet.split_model(model, {"d": {"units": [1]}})
        >>> bool((splitnet.merged_weights(split)["d"][0] == model.get_weights()[0]).all())
        True
    """
    out = {}
    for key, layer in kinds.walk(model):
        kind = kinds.any_kind_of(layer)
        if kind is not None and layer.built:
            out[key] = kind.merged_weights(layer)
    return out


def merge_model(model):
    """Return a copy of `model` in which every split layer is its plain layer again.

    The result is the original architecture: the same model class (a
    keras-hub task stays that task), the same layer classes, names and
    configs, and the same input names; each split layer becomes the plain
    layer it was split from, with the weights the pieces hold now. Its
    outputs equal the split model's. If `model` was compiled, the copy is
    compiled with the same settings and a fresh optimizer. The input model
    is not changed.

    Args:
        model: A split model (from `split_model`, `build_model` or
            `splitnet.load_model`), or any model (then: an equivalent copy).

    Returns:
        A new `keras.Model` without splitnet layers.

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
        >>> split = splitnet.split_model(model, {"d": {"units": [1]}})
        >>> merged = splitnet.merge_model(split)
        >>> type(merged.get_layer("d")).__name__, merged.get_layer("d").trainable
        ('Dense', True)
    """
    merged = functional.merge(model)
    if merged is None:
        return saving.plain_copy(model)
    if any(kinds.split_kind_of(layer) for _, layer in tree.walk(merged)):
        return saving.plain_copy(merged)  # some layers were split in place too
    saving.compile_like(merged, model)
    return merged
