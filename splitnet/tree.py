"""The layer tree of a model: every layer, at any depth, named by its path.

A layer is named by the names on the way to it, `outer/inner/leaf`, whether
it sits in a Functional graph, a nested model, or is held by a subclassed
layer's Python code (keras-hub's `transformer_layer_0/feedforward_intermediate_dense`,
Keras' `MultiHeadAttention` `.../self_attention_layer/query`).
"""

from __future__ import annotations

from splitnet import compat


def walk(model, whole=None):
    """Yield `(key, layer)` for every layer under `model`, depth first.

    A layer held in several places (a shared layer) is yielded once, under
    the first path that reaches it. A layer for which `whole(layer)` is true
    is yielded but not entered (a functional split stands for one layer).
    """
    seen = set()

    def visit(layer, prefix):
        for child in compat.sublayers(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            key = f"{prefix}{child.name}"
            yield key, child
            if whole is None or not whole(child):
                yield from visit(child, key + "/")

    yield from visit(model, "")


def along(model, key):
    """The layers on path `key`, from the top of `model` down, or None if there is none."""
    layers, layer = [], model
    for part in key.split("/"):
        matches = [child for child in compat.sublayers(layer) if child.name == part]
        if not matches:
            return None
        layer = matches[0]
        layers.append(layer)
    return layers


def find(model, key):
    """The layer at path `key`, or None."""
    layers = along(model, key)
    return None if layers is None else layers[-1]


def chain(model, target):
    """The layers from the top of `model` down to `target` (included), or None."""
    key = next((key for key, layer in walk(model) if layer is target), None)
    return None if key is None else along(model, key)


def own_weights(layer):
    """The weights a layer holds itself, not through its sub-layers, in its order."""
    inner = {id(w) for child in compat.sublayers(layer) for w in child.weights}
    return [w for w in layer.weights if id(w) not in inner]


def trainable_ids(model):
    """Ids of the variables `fit` would train: the truth about what is frozen."""
    return {id(v) for v in model.trainable_variables}
