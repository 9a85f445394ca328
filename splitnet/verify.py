"""Check, bit for bit, that frozen entries did not move: for `splitnet run` and `splitnet verify`.

Every weight of the model is compared, in the plain layer's layout (a split
layer's pieces are merged first), so a split model can be compared with its
merged copy. Two kinds of entries are counted:

* frozen: the entries of splittable layers that do not train (a split
  layer's frozen pieces, a Dense, Conv, EinsumDense or Embedding with
  `trainable = False`). These must be
  bit-identical; that is what splitnet promises.
* trainable: every entry `fit` trains, in any layer (a split layer's
  trainable pieces, every other trainable weight). Reported as moved or not.

Weights that are neither (a BatchNorm's moving statistics, a layer the user
froze that splitnet does not split) are not counted: they may change
legitimately, or are not splitnet's to check.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from splitnet import kinds, tree
from splitnet.errors import InputError


@dataclasses.dataclass
class FrozenCheck:
    """What `compare` found.

    Attributes:
        frozen: Frozen entries compared.
        changed: Frozen entries whose bits differ (0 is the promise).
        trainable: Entries that `fit` trains, in every layer of the model.
        moved: Trainable entries that differ (training moved them).
        first: Up to 5 changed frozen entries: `(layer, weight name, index, before, after)`.
        new: Entries AFTER has beyond BEFORE's shapes (a grown model's new entries).
        grown: Keys of the layers whose weights grew.
    """

    frozen: int = 0
    changed: int = 0
    trainable: int = 0
    moved: int = 0
    first: list = dataclasses.field(default_factory=list)
    new: int = 0
    grown: list = dataclasses.field(default_factory=list)

    def describe_first(self):
        # A numpy scalar prints as the shortest text that reads back as the same
        # value of its own dtype (float32: 0.114093065, not 0.11409306526184082).
        return "; ".join(f"{k}.{kind}{list(i)}: {a!s} -> {b!s}" for k, kind, i, a, b in self.first)


@dataclasses.dataclass
class LayerWeights:
    """One layer's own weights in the plain layout, and which entries are frozen or trained."""

    key: str
    names: list
    values: list
    frozen: list  # bool masks: frozen entries (splittable layers only)
    trained: list  # bool masks: entries `fit` trains
    splittable: bool = False


def snapshot(model):
    """Every layer's own weights (merged for split layers), in walk order, with their roles.

    Example:
        >>> import keras
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
        >>> [(w.key, w.names) for w in snapshot(model)]
        [('d', ['kernel', 'bias'])]
    """
    trainable = tree.trainable_ids(model)
    out = []
    for key, layer in kinds.walk(model):
        kind = kinds.any_kind_of(layer)
        if kind is not None and layer.built:
            values = kind.merged_weights(layer)
            masks = kind.masks(layer, trainable) or {}
            names = list(kind.weight_names_of(layer))
            frozen = [_mask(masks.get(name), value.shape) for name, value in zip(names, values)]
            out.append(LayerWeights(key, names, values, frozen, [~f for f in frozen], splittable=True))
            continue
        weights = tree.own_weights(layer)
        if not weights:
            continue
        values = [np.array(w) for w in weights]  # a copy, not a view of the variable
        out.append(
            LayerWeights(
                key,
                [w.name for w in weights],
                values,
                [np.zeros(v.shape, bool) for v in values],
                [np.full(v.shape, id(w) in trainable) for w, v in zip(weights, values)],
            )
        )
    return out


def _mask(mask, shape):
    return mask if mask is not None and mask.shape == shape else np.zeros(shape, bool)


def _bits_differ(a, b):
    """Elementwise: do the two arrays differ in any bit? (NaN == NaN, 0.0 != -0.0.)"""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return (a.view(np.uint8).reshape(a.shape + (-1,)) != b.view(np.uint8).reshape(b.shape + (-1,))).any(axis=-1)


def pair(before, after):
    """Match the layers of two `snapshot`s: by path, else by position among the rest.

    Layers are matched by their path (`outer/inner`) first. Those left over
    are matched in walk order, as long as they hold weights of the same
    shapes: Keras gives layers made in a parent's Python code new automatic
    names when a model is loaded. A layer with frozen entries must be found
    by its path (splitnet keeps the names of split layers), or the two are
    not the same model.

    Raises:
        InputError: the two do not have the same layers and weight shapes.
    """
    new_by_key = {layer.key: layer for layer in after}
    pairs, rest_old = [], []
    for old in before:
        if old.key in new_by_key:
            pairs.append((old, new_by_key.pop(old.key)))
        else:
            rest_old.append(old)
    rest_new = [layer for layer in after if layer.key in new_by_key]
    frozen_unmatched = [layer.key for layer in rest_old + rest_new if any(m.any() for m in layer.frozen)]
    if frozen_unmatched or len(rest_old) != len(rest_new):
        which = frozen_unmatched or [layer.key for layer in rest_old + rest_new]
        side = "BEFORE" if which[0] in {layer.key for layer in rest_old} else "AFTER"
        raise InputError(
            f"layer {which[0]!r} of {side} has no counterpart in the other model; "
            "are BEFORE and AFTER the same model?"
        )
    pairs += list(zip(rest_old, rest_new))
    for old, new in pairs:
        shapes = [v.shape for v in old.values], [v.shape for v in new.values]
        if shapes[0] != shapes[1] and not all(map(_grown, *shapes)):
            raise InputError(
                f"layer {old.key!r} has weights of shapes {shapes[0]} in BEFORE but {shapes[1]} in AFTER"
                + ("" if old.key == new.key else f" (layer {new.key!r})")
                + ("; give the base model first, then the grown one" if all(map(_grown, *shapes[::-1]))
                   else "; are BEFORE and AFTER the same model?")
            )
    return pairs


def _grown(before, after):
    """Whether shape `after` is `before` grown (`grow_model` appends at the ends of axes)."""
    return len(before) == len(after) and all(a >= b for b, a in zip(before, after))


def compare(before, after, grown_frozen=False):
    """Compare two `snapshot`s of the same architecture (layers matched by `pair`).

    An entry is frozen when either snapshot says so, and trainable (and not
    frozen) when either says so; so a split model compares with its merged
    copy in either order. AFTER may be BEFORE grown (`grow_model`): a weight
    that grew is compared on BEFORE's entries, which sit at the start of
    each axis; the rest are counted as new. With `grown_frozen`, the old
    entries of grown splittable layers count as frozen (for a grown model
    that records no masks, e.g. merged).

    Raises:
        InputError: the two do not have the same layers and weight shapes.

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
        >>> split = splitnet.split_model(model, {"d": {"units": [0]}})
        >>> check = compare(snapshot(split), snapshot(splitnet.merge_model(split)))
        >>> check.frozen, check.changed, check.trainable, check.moved
        (5, 0, 10, 0)
    """
    check = FrozenCheck()
    for old, new in pair(before, after):
        layer_grew = any(a.shape != b.shape for a, b in zip(old.values, new.values))
        if layer_grew:
            check.grown.append(old.key)
        for i, (name, a, b) in enumerate(zip(old.names, old.values, new.values)):
            new_frozen, new_trained = new.frozen[i], new.trained[i]
            if a.shape != b.shape:
                block = tuple(slice(0, n) for n in a.shape)
                check.new += b.size - a.size
                b, new_frozen, new_trained = b[block], new_frozen[block], new_trained[block]
            if layer_grew and grown_frozen and new.splittable:
                new_frozen = np.ones(a.shape, bool)
            frozen = old.frozen[i] | new_frozen
            trained = (old.trained[i] | new_trained) & ~frozen
            differs = _bits_differ(a, b)
            check.frozen += int(frozen.sum())
            check.changed += int((differs & frozen).sum())
            check.trainable += int(trained.sum())
            check.moved += int((differs & trained).sum())
            for index in zip(*np.nonzero(differs & frozen)):
                if len(check.first) < 5:
                    check.first.append((old.key, name, tuple(int(j) for j in index), a[index], b[index]))
    return check


def verify(before, after):
    """Check that every frozen entry of `after` equals `before`, bit for bit.

    An entry is checked when either model records it as frozen (a split
    model's split layers, a non-trainable Dense), so `after` may be split or
    merged. Every other weight that trains is compared too, to count what
    training moved.

    `after` may be `before` grown (`grow_model`), then trained and merged or
    not: old entries are compared where they are (at the start of each
    grown axis) and the rest counted as new (`new`, `grown`). A grown model
    that records no frozen entries (merged) must keep every old entry of its
    grown layers.

    Args:
        before: The model before training (usually the split model), or the
            base model that `after` was grown from.
        after: The model after training, split or merged.

    Returns:
        A `FrozenCheck`; `changed == 0` means every frozen entry is intact.

    Raises:
        InputError: neither model records frozen entries, or the layers differ.

    Example:
        >>> check = splitnet.verify(splitnet.load_model("split.keras"),
        ...                         splitnet.load_model("merged.keras"))  # doctest: +SKIP
        >>> check.changed  # doctest: +SKIP
        0
    """
    old, new = snapshot(before), snapshot(after)
    if any(m.any() for layer in old + new for m in layer.frozen):
        return compare(old, new)
    check = compare(old, new, grown_frozen=True)  # AFTER may be BEFORE grown, then merged
    if not check.grown:
        raise InputError("neither model records frozen entries; give the split model (from build, train or run)")
    return check
