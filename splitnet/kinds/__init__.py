"""The layer-kind seam: what splitnet knows about each kind of layer it splits.

Each kind is one module (`dense.py`, ...) exporting a `KIND` object with:

* `name`, and `note`: the dataset name its split layers write beside their
  weights (see `saving.py`).
* `plain`: the Keras layer class it splits (exact type, not subclasses),
  and `split`: the registered class a split layer of that kind becomes
  (its instances have a `plan`).
* `plan(layer, rule, where)`: resolve a `spec.FreezeRule` against the
  layer (which axes `units` and `rows` name) and `check` that splitting
  keeps its meaning; raises `SpecError`.
* `install(layer, plan, key)`: split the built layer in place;
  `plan_from_note(note)`: the plan a saved note describes.
* `masks(layer, trainable_ids)`: `{weight name: bool array}` in the plain
  layer's coordinates, True where frozen (split, or plain and not trainable),
  or None when nothing is frozen.
* `merged_weights(layer)`: the plain layer's weights, as numpy arrays.
* `describe(layer, masks)`: a row for `splitnet inspect`.
* `plain_entry(entry)`: the serialized plain layer for a serialized split
  one (what `merge_model` writes into the model config).

Everything else (spec, split, merge, verify, inspect, export) asks the kind,
so a new kind is one module here plus its tests.
"""

from __future__ import annotations

from splitnet.kinds import dense

KINDS = (dense.KIND,)


def kind_of(layer):
    """The kind that can split `layer` (its exact class), or None."""
    for kind in KINDS:
        if type(layer) is kind.plain:
            return kind
    return None


def split_kind_of(layer):
    """The kind of an already split layer, or None."""
    for kind in KINDS:
        if isinstance(layer, kind.split):
            return kind
    return None


def any_kind_of(layer):
    """The kind of `layer`, split or plain, or None."""
    return split_kind_of(layer) or kind_of(layer)


def by_name(name):
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise KeyError(name)


def supported_names():
    return ", ".join(kind.plain.__name__ for kind in KINDS)
