"""Check, bit for bit, that frozen entries did not move: for `splitnet run` and `splitnet verify`."""

from __future__ import annotations

import dataclasses

import numpy as np

from splitnet.errors import InputError
from splitnet.merge import merged_weights
from splitnet.split import frozen_masks


@dataclasses.dataclass
class FrozenCheck:
    """What `compare` found.

    Attributes:
        frozen: Frozen entries compared.
        changed: Frozen entries whose bits differ (0 is the promise).
        trainable: Other entries of the same layers.
        moved: Other entries that differ (training moved them).
        first: Up to 5 changed frozen entries: `(layer, "kernel"|"bias", index, before, after)`.
    """

    frozen: int = 0
    changed: int = 0
    trainable: int = 0
    moved: int = 0
    first: list = dataclasses.field(default_factory=list)

    def describe_first(self):
        return "; ".join(f"{k}.{kind}{list(i)}: {a!r} -> {b!r}" for k, kind, i, a, b in self.first)


def _bits_differ(a, b):
    """Elementwise: do the two arrays differ in any bit? (NaN == NaN, 0.0 != -0.0.)"""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return (a.view(np.uint8).reshape(a.shape + (-1,)) != b.view(np.uint8).reshape(b.shape + (-1,))).any(axis=-1)


def compare(before, after, masks):
    """Compare two `merged_weights` dicts on `frozen_masks`-style masks.

    Layers in `before` without a mask count as wholly trainable.

    Example:
        >>> import numpy as np
        >>> w = {"d": [np.zeros((2, 2), "float32")]}
        >>> moved = {"d": [np.array([[0, 1], [0, 0]], "float32")]}
        >>> masks = {"d": {"kernel": np.array([[True, False], [False, False]]), "bias": np.zeros(0, bool)}}
        >>> check = compare(w, moved, masks)
        >>> check.frozen, check.changed, check.moved
        (1, 0, 1)
    """
    check = FrozenCheck()
    for key, weights in before.items():
        mask = masks.get(key, {})
        for kind, old, new in zip(("kernel", "bias"), weights, after[key]):
            frozen = mask.get(kind)
            if frozen is None or frozen.shape != old.shape:
                frozen = np.zeros(old.shape, bool)
            differs = _bits_differ(old, new)
            check.frozen += int(frozen.sum())
            check.changed += int((differs & frozen).sum())
            check.trainable += int((~frozen).sum())
            check.moved += int((differs & ~frozen).sum())
            for index in zip(*np.nonzero(differs & frozen)):
                if len(check.first) < 5:
                    check.first.append((key, kind, tuple(int(i) for i in index), old[index].item(), new[index].item()))
    return check


def _union(a, b):
    """Masks frozen in either model (where both have a layer, their shapes must agree)."""
    out = {key: dict(value) for key, value in a.items()}
    for key, value in b.items():
        if key not in out:
            out[key] = dict(value)
            continue
        for kind, mask in value.items():
            if out[key][kind].shape == mask.shape:
                out[key][kind] = out[key][kind] | mask
    return out


def verify(before, after):
    """Check that every frozen entry of `after` equals `before`, bit for bit.

    An entry is checked when either model records it as frozen (a split
    model's split layers, a non-trainable Dense), so `after` may be split or merged.

    Args:
        before: The model before training (usually the split model).
        after: The model after training, split or merged.

    Returns:
        A `FrozenCheck`; `changed == 0` means every frozen entry is intact.

    Raises:
        InputError: neither model records frozen entries, or the layers differ.

    Example:
        >>> check = splitnet.verify(keras.saving.load_model("split.keras"),
        ...                         keras.saving.load_model("merged.keras"))  # doctest: +SKIP
        >>> check.changed  # doctest: +SKIP
        0
    """
    masks = _union(frozen_masks(before), frozen_masks(after))
    if not masks:
        raise InputError("neither model records frozen entries; give the split model (from build, train or run)")
    old, new = merged_weights(before), merged_weights(after)
    for key in masks:
        for model_weights, which in ((old, "BEFORE"), (new, "AFTER")):
            if key not in model_weights:
                raise InputError(f"{which} has no layer {key!r} (are BEFORE and AFTER the same model?)")
        shapes = ([w.shape for w in old[key]], [w.shape for w in new[key]])
        if shapes[0] != shapes[1]:
            raise InputError(f"layer {key!r} has weights of shapes {shapes[0]} in BEFORE but {shapes[1]} in AFTER")
    return compare({k: old[k] for k in masks}, {k: new[k] for k in masks}, masks)
