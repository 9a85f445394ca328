"""The layer-kind seam: what splitnet knows about each kind of layer it splits.

Each kind is one module (`dense.py`, `conv.py`, `einsum.py`,
`embedding.py`) exporting a `KIND` object, a `pieces.Kind`, with:

* `name`, and `note`: the dataset name its split layers write beside their
  weights (see `saving.py`).
* `splits`: `{plain Keras layer class: registered split class}`. A layer is
  of the kind when its exact type is a key (not a subclass: a subclass may
  compute something else with the same weights); `plains` and `split` are
  the keys and the values as tuples. Split instances have a `plan`.
* `plan(layer, rule, where)`: resolve a `spec.FreezeRule` against the
  layer (which axes `units` and `rows` name) and `check` that splitting
  keeps its meaning; raises `SpecError`.
* `install(layer, plan, key)`: split the built layer in place;
  `plan_from_note(note)`: the plan a saved note describes.
* `masks(layer, trainable_ids)`: `{weight name: bool array}` in the plain
  layer's coordinates, True where frozen (split, or plain and not trainable),
  or None when nothing is frozen; `weight_names_of(layer)`.
* `merged_weights(layer)`: the plain layer's weights, as numpy arrays.
* `describe(layer, masks)`: a row for `splitnet inspect`; `picture(layer,
  masks)`: a 2-D map for `--plot`.
* `plain_entry(entry)`: the serialized plain layer for a serialized split
  one (what `merge_model` writes into the model config).
* Growing (`splitnet.grow`): `grow_config(layer, plan, config, units, rows)`,
  the config of the bigger layer; `grow_roles(layer, plan, rows, units)`, how
  each weight's axes grow (inputs start at zero into old outputs, outputs from
  `init`); `grow_flow(layer, plan)`, whether its rows and units are the last
  axes of its input and output.

Everything else (spec, split, merge, verify, inspect, export) asks the kind,
so a new kind is one module here plus its tests.
"""

from __future__ import annotations

from splitnet import tree
from splitnet.kinds import conv, dense, einsum, embedding
from splitnet.kinds.einsum import heads_rules  # noqa: F401 - `heads:` rules, expanded by `split.py`

KINDS = (dense.KIND, einsum.KIND, conv.KIND, embedding.KIND)


def kind_of(layer):
    """The kind that can split `layer` (its exact class), or None."""
    for kind in KINDS:
        if type(layer) in kind.splits:
            return kind
    return None


def split_kind_of(layer):
    """The kind of an already split layer, or None."""
    for kind in KINDS:
        if isinstance(layer, kind.split):
            return kind
    return None


def any_kind_of(layer):
    """The kind of `layer`, split (in place or functional) or plain, or None."""
    return split_kind_of(layer) or kind_of(layer) or functional_kind_of(layer)


def functional_kind_of(layer):
    """The kind of the plain layer a functional split (a nested model of pieces) stands for, or None."""
    from splitnet import functional

    layout = functional.read(layer)
    return None if layout is None else layout.kind


def is_split(layer):
    """Whether `layer` is split, in place or functional."""
    from splitnet import functional

    return split_kind_of(layer) is not None or functional.is_split(layer)


def walk(model):
    """`tree.walk`, with each functional split as one layer (its pieces not visited)."""
    from splitnet import functional

    return tree.walk(model, whole=functional.is_split)


def after_split(model):
    """What needs the whole model once its layers are split: attention per head group."""
    from splitnet.kinds import attention

    attention.group_heads(model)


def by_name(name):
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise KeyError(name)


def supported_names():
    names = dict.fromkeys(cls.__name__ for kind in KINDS for cls in kind.plains)
    return ", ".join(names)
