"""Walking and rewriting Keras models: what split and merge share.

`rewrite` is one `keras.models.clone_model` call per (nested) model: every
layer is copied with its weights, except the layers a `replacement` function
claims, whose calls it replaces. Nested Functional and Sequential models are
rewritten the same way (clone_model's own recursion would skip Sequential
models and leave their layers shared with the input model).
"""

from __future__ import annotations

import keras

# Functional is not exported by name; it is what clone_model can rewrite.
from keras.src.models.functional import Functional

from splitnet.errors import ModelError, SplitnetError
from splitnet.layers import SplitJoin


def walk_layers(model, prefix="", trainable=True):
    """Yield `(key, layer, container, effectively_trainable)` for every layer.

    `key` is the layer's name, prefixed `outer/` inside nested models.
    """
    for layer in model.layers:
        key = f"{prefix}{layer.name}"
        effective = trainable and layer.trainable
        yield key, layer, model, effective
        if isinstance(layer, keras.Model):
            yield from walk_layers(layer, key + "/", effective)


def find_groups(model):
    """Yield `(key, join, layers)` for every split group in `model`.

    `layers` maps each role of `DensePlan.layer_roles()` to the group's layer,
    found by its generated name in the join's container.
    """
    for key, layer, container, _ in walk_layers(model):
        if isinstance(layer, SplitJoin):
            plan = layer.plan
            yield key, layer, {role: container.get_layer(plan.layer_name(role)) for role in plan.layer_roles()}


def group_member_keys(model):
    """Keys of every layer that belongs to a split group (its join excluded)."""
    keys = set()
    for key, join, layers in find_groups(model):
        prefix = key[: len(key) - len(join.name)]
        keys |= {prefix + layer.name for layer in layers.values()}
    return keys


def is_rewritable(model):
    return isinstance(model, (Functional, keras.Sequential))


def as_functional(model):
    """`model` as a Functional model (a Sequential one is re-wrapped, sharing its layers)."""
    if isinstance(model, keras.Sequential):
        if not model.built or not model.inputs:
            raise ModelError(f"Sequential model {model.name!r} is not built; give it an Input first")
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if not isinstance(model, Functional):
        raise ModelError(
            f"cannot rewrite {type(model).__name__} {getattr(model, 'name', '')!r}: only Functional "
            "and Sequential models can be rewritten (a subclassed model's graph is not known)"
        )
    return model


def rewrite(model, replacement):
    """Clone `model` with weights; layers claimed by `replacement` are replaced at each call.

    Args:
        model: A Functional or Sequential model (Sequential ones come back Functional).
        replacement: `fn(layer)` -> None to copy the layer, or a callable used
            instead of calling the layer, with the call's arguments. It is
            asked once per layer, even for a layer shared across nested
            models, so a shared layer gets one replacement (or one copy).

    Returns:
        The new Functional model.
    """
    clones, replaced, copies = {}, {}, []  # shared by the nested models' rewrites

    def clone_function(layer):
        if id(layer) in clones:
            return clones[id(layer)]
        call = replacement(layer)
        if call is not None:
            replaced[id(layer)] = call
            clone = layer  # never called itself: call_function intercepts it
        elif isinstance(layer, keras.Model) and is_rewritable(layer):
            clone = clone_graph(layer)
        else:
            clone = layer.__class__.from_config(layer.get_config())
            copies.append((layer, clone))
        clones[id(layer)] = clone
        return clone

    def call_function(layer, *args, **kwargs):
        if id(layer) in replaced:
            return replaced[id(layer)](*args, **kwargs)
        return layer(*args, **kwargs)

    def clone_graph(original):
        try:
            new = keras.models.clone_model(
                as_functional(original), clone_function=clone_function, call_function=call_function
            )
        except SplitnetError:
            raise
        except Exception as exc:  # noqa: BLE001 - Keras' own reason, with the model's name
            raise ModelError(f"cannot rewrite model {original.name!r}: {' '.join(str(exc).split())}") from exc
        if not original.trainable:
            new.trainable = False
        return new

    new_model = clone_graph(model)
    for old, new in copies:
        new.set_weights(old.get_weights())
    return new_model
