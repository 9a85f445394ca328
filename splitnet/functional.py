"""The functional form: a split layer becomes a small Keras model of plain pieces.

In this form a split layer is replaced, where it sits in its model's graph,
by a nested Functional model of the same name built only from Keras' own
layers and ops: one layer **of the layer's own class** per piece of its
`plan.KernelPlan` (frozen pieces built with `trainable=False`), each
reading the input rows it uses (`ops.take`, or a slice), the pieces of one
unit block summed with `Add`, the blocks joined with `Concatenate` in the
original unit order (slices, or one `ops.take`), and the activation applied
once at the end (`Activation`). For an Embedding split by token ids, each
id is looked up in the piece that holds its row (`ops.take`, `ops.where`).

    hidden (Functional)
      hidden__input (InputLayer)
      hidden__trainable (Dense)            units the rule leaves trainable
      hidden__frozen (Dense, trainable=False)
      hidden__join (Concatenate)
      hidden__activation (Activation)

Such a model needs no custom object: it saves, loads, trains and saves
again with plain Keras, where splitnet cannot even be imported. Keeping each
split inside a model of the layer's name keeps the outer model what it was
(its class, its list of layers, every path a rule or a mask names), and lets
`merge_model` put the plain layer back in one place.

Everything splitnet needs to read a split back (which units and rows each
piece holds) is in the nested model's own config: `read` interprets its
index ops on label arrays and asks the layer's kind for the plan, so a
functional split trained and saved without splitnet merges like any other.

Cross-layer pruning: where a split layer is called on another split layer's
output alone, the producer also outputs its unit blocks apart (trainable
units, frozen units) and the consumer reads them as two inputs, each of its
pieces cut along them (`KernelPlan.row_cuts`). Autodiff then computes no
gradient towards the producer's frozen block, which depends on frozen
weights (and on inputs that need none) alone; the joined output stays for
every other reader, and a graph function drops it where none reads it.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re

import keras
import numpy as np
from keras import ops

from splitnet import compat, kinds, saving, tree
from splitnet.compat import Functional
from splitnet.errors import ModelError
from splitnet.kinds.pieces import MAX_SLICES
from splitnet.plan import join_order, runs

SEPARATOR = "__"  # layer names cannot contain "/"


# --------------------------------------------------------------------------
# Where the functional form applies


def why_not(model, key, layer, plan, kind):
    """Why the layer at `key` cannot be split in the functional form, or None if it can."""
    parents = [model] + (tree.along(model, key) or [])[:-1]
    for parent in parents:
        if type(parent) not in (Functional, keras.Sequential):
            what = "the model" if parent is model else f"{parent.name!r}"
            return (
                f"{what} is a {type(parent).__name__}, whose own class or Python code calls the layer; "
                "only a layer in a plain Functional or Sequential graph can be replaced by a graph of pieces"
            )
    if compat.reads_masked_input(layer):
        return "it reads a masked input (from Embedding(mask_zero=True) or Masking), and a nested model would drop the mask"
    holders = [m for m in [model] + [m for _, m in tree.walk(model)] if any(c is layer for c in compat.sublayers(m))]
    if len(holders) > 1:
        return f"it is shared by several models ({', '.join(repr(m.name) for m in holders)}), which Keras rebuilds as two layers"
    return kind.functional_refusal(layer, plan)


# --------------------------------------------------------------------------
# Building


def piece_name(layer_name, role):
    return f"{layer_name}{SEPARATOR}{role}"


def input_name(layer_name, plan, cut=None):
    """The nested model's input: `NAME__input`, `NAME__input_CUT` for each input of a
    cut plan, and `..._grown_ROWSxUNITS` after it for a layer `grow_model` made bigger
    (its sizes before, which the model itself keeps)."""
    grown = "" if plan.grown_from is None else "_grown_{}x{}".format(*plan.grown_from)
    return piece_name(layer_name, "input") + ("" if cut is None else f"_{cut}") + grown


_GROWN = re.compile(r"__input(?:_\d+)?_grown_(\d+)x(\d+)$")

# Activations that act on each unit alone, so they may be applied to each unit block.
ELEMENTWISE = {
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "tanh", "sigmoid",
    "hard_sigmoid", "hard_silu", "hard_swish", "softplus", "softsign", "exponential", "mish", "celu"
}


def build(layer, plan, kind, blocks_too=False):
    """The nested model that replaces the built `layer`, split by `plan` (weights not set).

    A plan with `row_cuts` takes one input per cut (its producer's unit
    blocks); with `blocks_too`, the model outputs its unit blocks (each
    activated) after the joined output, for consumers that read them apart.
    """
    name = layer.name
    input_shape = tuple(layer.get_build_config()["input_shape"])
    dtype = kind.functional_input_dtype(layer)
    if plan.row_cuts is None:
        inputs = keras.Input(batch_shape=input_shape, dtype=dtype, name=input_name(name, plan))
    else:
        inputs = [
            keras.Input(batch_shape=input_shape[:-1] + (len(cut),), dtype=dtype, name=input_name(name, plan, k))
            for k, cut in enumerate(plan.row_cuts)
        ]
    config = layer.get_config()

    def piece(p, x):
        cfg = {**kind.piece_config(layer, plan, config, p), "name": piece_name(name, p.name), "trainable": not p.frozen}
        return type(layer).from_config(cfg)(x)

    result = kind.functional_call(layer, plan, inputs, piece, blocks_too)
    joined, blocks = result if blocks_too else (result, [])
    activation = config.get("activation")
    if activation not in (None, "linear"):
        joined = keras.layers.Activation(activation, name=piece_name(name, "activation"))(joined)
        blocks = [keras.layers.Activation(activation, name=piece_name(name, f"activation_{k}"))(b) for k, b in enumerate(blocks)]
    return keras.Model(inputs, [joined, *blocks] if blocks_too else joined, name=name)


def take_rows(x, rows, size, axis):
    """`x` at `rows` along `axis`: one slice for a run, else a gather (never more than one op)."""
    r = runs(rows)
    if len(r) == 1:
        start, stop = r[0]
        if (start, stop) == (0, size):
            return x
        index = [slice(None)] * len(x.shape)
        index[axis] = slice(start, stop)
        return x[tuple(index)]
    return ops.take(x, np.asarray(rows, dtype="int32"), axis=axis)


def join_units(blocks, plan, axis, name):
    """The unit blocks joined in the original order: a few slices, else concatenation and one gather."""
    if len(blocks) == 1:
        return blocks[0]
    segments, perm = join_order(plan.blocks, plan.units)
    if len(segments) <= MAX_SLICES:
        parts = []
        for block, start, stop in segments:
            x = blocks[block]
            parts.append(x if (start, stop) == (0, x.shape[axis]) else take_rows(x, range(start, stop), x.shape[axis], axis))
        return keras.layers.Concatenate(axis=axis, name=piece_name(name, "join"))(parts)
    joined = keras.layers.Concatenate(axis=axis, name=piece_name(name, "join"))(blocks)
    return ops.take(joined, np.asarray(perm, dtype="int32"), axis=axis)


def kernel_call(plan, inputs, piece, in_axis, out_axis, name, blocks_too=False):
    """Pieces of a kernel kind (Dense, Conv, EinsumDense): read rows, sum per block, join.

    `inputs` is the input, or for a cut plan the list of its producer's blocks.
    Returns the joined output, or with `blocks_too`, `(joined, [each block])`.
    """
    views = {}
    blocks = [[] for _ in plan.blocks]
    for p in plan.pieces:
        if p.cut is not None:  # the rows it reads, at their places in the cut's input
            cut = plan.row_cuts[p.cut]
            if (p.cut, p.rows) not in views:
                position = {row: i for i, row in enumerate(cut)}
                views[p.cut, p.rows] = take_rows(inputs[p.cut], [position[r] for r in p.rows], len(cut), in_axis)
            x = views[p.cut, p.rows]
        elif p.rows is not None:
            if p.rows not in views:
                views[p.rows] = take_rows(inputs, p.rows, plan.in_dim, in_axis)
            x = views[p.rows]
        else:
            x = inputs
        blocks[p.block].append(piece(p, x))
    summed = [
        ys[0] if len(ys) == 1 else keras.layers.Add(name=piece_name(name, "sum" if i == 0 else f"sum_{i}"))(ys)
        for i, ys in enumerate(blocks)
    ]
    joined = join_units(summed, plan, out_axis, name)
    return (joined, summed) if blocks_too else joined


# --------------------------------------------------------------------------
# Reading a split back from the nested model itself


@dataclasses.dataclass
class Layout:
    """A functional split found in a model.

    Attributes:
        model: The nested model that holds the pieces (named as the plain layer).
        kind: The kind of the plain layer.
        plan: The `KernelPlan` the pieces follow.
        pieces: The piece layers, in `plan.pieces` order.
        plain: The plain layer it merges into, serialized (its config and build
            config; not a built layer, which would hold a copy of the weights
            for as long as the split model lives).
    """

    model: object
    kind: object
    plan: object
    pieces: list
    plain: dict

    def merged_weights(self):
        """The plain layer's weights (numpy arrays, in its order), from the pieces' values."""
        values = [[np.asarray(w) for w in layer.weights] for layer in self.pieces]
        merged = self.plan.merge_weights(values, None, values[0][0].dtype)
        return merged if self.plan.use_bias else merged[:1]

    def masks(self, trainable_ids):
        """`{weight name: bool array}`: True where frozen by the plan, or held by a
        piece `fit` does not train (the model or a parent set `trainable = False`)."""
        plan = self.plan
        kernel, bias = plan.kernel_mask(), plan.bias_mask()
        for piece, layer in zip(plan.pieces, self.pieces):
            if any(id(v) not in trainable_ids for v in layer.weights):
                held_kernel, held_bias = plan.piece_masks(piece)
                kernel |= held_kernel
                bias |= held_bias
        names = self.kind.functional_weight_names
        return {names[0]: kernel} if len(names) == 1 else {names[0]: kernel, names[1]: bias}


_PIECE = re.compile(r"^(trainable|frozen_rows|frozen)(?:_(\d+))?$")


def _pieces_of(layer):
    """`{piece name: layer}` of the pieces a nested model holds (`NAME__PIECE`)."""
    prefix = layer.name + SEPARATOR
    return {
        sub.name[len(prefix):]: sub
        for sub in layer.layers
        if sub.name.startswith(prefix) and _PIECE.match(sub.name[len(prefix):])
    }


def _role(piece):
    return _PIECE.match(piece).group(1)


def is_split(layer):
    """Whether `layer` is a functional split: a Functional holding pieces named `NAME__ROLE`."""
    return type(layer) is Functional and bool(_pieces_of(layer))


def read(layer):
    """The `Layout` of a functional split, or None if `layer` is not one.

    Raises:
        ModelError: it has pieces named `NAME__ROLE`, but not a graph splitnet builds.
    """
    if not is_split(layer):
        return None
    cached = layer.__dict__.get("_splitnet_layout")
    if cached is not None:
        return cached
    name = layer.name
    by_name = _pieces_of(layer)
    kind = kinds.kind_of(next(iter(by_name.values())))
    if kind is None or len({type(sub) for sub in by_name.values()}) != 1:
        raise ModelError(f"layer {name!r} looks like a functional split, but its pieces are not of one splittable class")
    try:
        layout = _layout(layer, kind, by_name, _cuts(layer))
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise ModelError(f"layer {name!r} looks like a functional split, but splitnet cannot read it: {exc}") from None
    layer.__dict__["_splitnet_layout"] = layout  # not a Keras attribute: not tracked, not saved
    return layout


def _cuts(layer):
    """For a nested model that reads its producer's unit blocks (a cut plan), the rows
    each of its inputs carries: the units of the producer's block it is called on."""
    if len(layer.inputs) == 1:
        return None
    cuts = []
    for producer, index in compat.producers(layer):
        layout = read(producer)
        if layout is None or index == 0:
            raise ModelError(f"layer {layer.name!r} reads {producer.name!r}, which is not a split layer's unit block")
        cuts.append(layout.plan.blocks[index - 1])
    return tuple(cuts)


def _layout(model, kind, by_name, cuts):
    """Read the split: try each way the kind's axes may have been split (one, except
    for an EinsumDense with several unit or row letters) until one fits."""
    error = None
    for axes in kind.functional_candidates(next(iter(by_name.values()))):
        try:
            return _layout_along(model, kind, by_name, axes, cuts)
        except ValueError as exc:
            error = exc
    raise error


def _layout_along(model, kind, by_name, axes, cuts):
    from splitnet import spec as spec_lib  # spec imports no model code

    name = model.name
    in_axis, out_axis, unit_axis, extra_rule = axes
    widths = {piece: int(layer.output.shape[out_axis]) for piece, layer in by_name.items()}
    config = model.get_config()
    input_rows = None if cuts is None else dict(zip((entry[0] for entry in config["input_layers"]), cuts))
    found = _Labels(config, name, in_axis, out_axis, len(model.outputs[0].shape), widths, input_rows).run()
    # The plain layer: a piece's config with every unit (and token) back, and the activation.
    with_bias = [piece for piece, layer in by_name.items() if kind.has_bias(layer)]
    template = by_name[with_bias[0] if with_bias else next(iter(by_name))]
    plain_config = kind.resized(template.get_config(), template, unit_axis, len(found.cols_of), found.token_count)
    plain_config = kind.with_bias(plain_config, bool(with_bias), template)
    plain_config.update(name=name, trainable=True)
    if "activation" in plain_config:
        plain_config["activation"] = found.activation or "linear"
    plain = type(template).from_config(plain_config)
    input_shape = tuple(model.inputs[0].shape)
    plain.build(input_shape if cuts is None else input_shape[:-1] + (sum(len(c) for c in cuts),))
    # The plan, made as a user's rule would make it, must give exactly these pieces.
    roles = {piece: _role(piece) for piece in by_name}
    rule = dict(extra_rule)
    frozen = [piece for piece, role in roles.items() if role == "frozen"]
    if frozen:
        rule["units"] = sorted(found.cols(frozen[0]))
    frozen_rows = [piece for piece, role in roles.items() if role == "frozen_rows"]
    if frozen_rows:
        rule["rows"] = sorted(row for piece in frozen_rows for row in found.rows(piece, all_rows=True))
        rule["bias"] = any(p in with_bias for p in frozen_rows) and "trainable" in roles.values()
    where = spec_lib.Where()
    (parsed,) = spec_lib.parse_freeze({name: rule}, where)
    plan = kind.plan(plain, parsed, where)
    if cuts is not None:
        plan = dataclasses.replace(plan, row_cuts=cuts)
    pieces = []
    for piece in plan.pieces:
        layer = by_name.get(piece.name)
        if layer is None or found.rows(piece.name) != piece.rows or found.cols(piece.name) != piece.cols:
            raise ValueError(f"piece {piece_name(name, piece.name)!r} does not hold what its plan gives it")
        pieces.append(layer)
    if len(pieces) != len(by_name):
        raise ValueError("it holds pieces its plan does not")
    grown = _GROWN.search(model.layers[0].name if isinstance(model.layers[0], keras.layers.InputLayer) else "")
    if grown:
        plan = dataclasses.replace(plan, grown_from=(int(grown.group(1)), int(grown.group(2))))
    return Layout(model=model, kind=kind, plan=plan, pieces=pieces, plain=keras.saving.serialize_keras_object(plain))


class _Labels:
    """Runs a nested split model's config on index labels instead of tensors.

    The input carries its row numbers along the rows axis (the inputs of a
    cut plan: the rows each carries); each piece's output carries `(piece,
    unit)` labels along the units axis. Running the model's index ops
    (slices, gathers, concatenation, `where`) on them gives the input rows
    each piece reads and which of the layer's units each piece computes: the
    split, read from the model alone.
    """

    def __init__(self, config, name, in_axis, out_axis, out_rank, widths, input_rows=None):
        self.widths = widths  # piece -> how many units it computes
        self.pieces = sorted(widths)
        self.input_rows = input_rows  # input name -> the rows it carries (a cut plan)
        self.entries = {entry["name"]: entry for entry in config["layers"]}
        outputs = config["output_layers"]
        self.output = outputs[0] if isinstance(outputs[0], str) else outputs[0][0]  # the joined output
        self.prefix = name + SEPARATOR
        self.in_axis, self.out_axis, self.out_rank = in_axis, out_axis, out_rank
        self.memo = {}
        self.read_rows = {}  # piece -> ("input", size) | ("rows", labels)
        self.selected = {}  # piece -> bool mask of the token ids whose rows it holds
        self.same = []  # pieces whose outputs were added or chosen between: the same units
        self.activation = None
        self.cols_of = None

    def run(self):
        labels = np.asarray(self.value(self.output)[1])
        if sum(d != 1 for i, d in enumerate(labels.shape) if i != self.out_axis % labels.ndim):
            raise ValueError("its output is not its pieces' units joined along one axis")
        labels = np.moveaxis(labels, self.out_axis, 0).reshape(-1)
        self.cols_of = [(self.pieces[int(label) // _BIG], int(label) % _BIG) for label in labels]
        return self

    def cols(self, piece):
        """The units `piece` computes, in its own order."""
        for group in self.same:
            if piece in group:
                piece = group[0]
        held = sorted((position, unit) for unit, (p, position) in enumerate(self.cols_of) if p == piece)
        if [position for position, _ in held] != list(range(len(held))):
            raise ValueError(f"the units of piece {piece!r} are not each computed once")
        return tuple(unit for _, unit in held)

    def rows(self, piece, all_rows=False):
        """The input rows (or token ids) `piece` reads, or None for all of them (with
        `all_rows`, those too)."""
        if piece in self.selected:
            chosen = self.selected[piece]
            return None if chosen.all() and not all_rows else tuple(int(i) for i in np.flatnonzero(chosen))
        tag, labels = self.read_rows.get(piece, ("ids", None))
        if tag == "input" and all_rows:
            return tuple(range(labels))
        if tag != "rows":
            return None
        return tuple(int(i) for i in np.moveaxis(np.asarray(labels), self.in_axis, 0).reshape(-1))

    @property
    def token_count(self):
        """The vocabulary size, when the pieces hold token rows; else None."""
        return next(iter(self.selected.values())).size if self.selected else None

    def arg(self, value):
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            return self.value(value["config"]["keras_history"][0])
        if isinstance(value, dict) and value.get("class_name") in ("__numpy__", "__slice__", "__ellipsis__"):
            return ("const", keras.saving.deserialize_keras_object(value))
        if isinstance(value, (list, tuple)):
            return [self.arg(v) for v in value]
        return ("const", value)

    def value(self, name):
        if name not in self.memo:
            self.memo[name] = self._evaluate(self.entries[name])
        return self.memo[name]

    def _evaluate(self, entry):
        cls, config, name = entry["class_name"], entry["config"], entry["name"]
        if cls == "InputLayer":
            if self.in_axis is None:
                return ("ids", None)
            shape = [1] * len(config["batch_shape"])
            if self.input_rows is not None:  # an input of a cut plan: its producer's block
                rows = np.asarray(self.input_rows[name])
                shape[self.in_axis] = rows.size
                return ("rows", rows.reshape(shape))
            size = config["batch_shape"][self.in_axis]
            shape[self.in_axis] = size
            return ("input", np.arange(size).reshape(shape))
        node = entry["inbound_nodes"][0]
        args = [self.arg(a) for a in node["args"]]
        if name.startswith(self.prefix) and name[len(self.prefix):] in self.widths:
            return self._piece(name[len(self.prefix):], args[0])
        if cls == "GetItem":
            key = args[1][1] if args[1][0] == "const" else tuple(a[1] for a in args[1])
            return ("rows" if args[0][0] in ("input", "rows") else "units", args[0][1][key if isinstance(key, tuple) else (key,)])
        if cls == "Take":
            axis = config.get("axis", node.get("kwargs", {}).get("axis"))
            if args[0][0] == "const":  # a table looked up by token id
                return ("table", np.asarray(args[0][1]))
            tag = "rows" if args[0][0] in ("input", "rows") else "units"
            labels = args[0][1]
            self._along(axis, self.in_axis if tag == "rows" else self.out_axis, labels.ndim)
            return (tag, np.take(labels, np.asarray(args[1][1]), axis=axis))
        if cls == "Concatenate":
            self._along(config["axis"], self.out_axis, self.out_rank)
            return ("units", np.concatenate([p[1] for p in args[0]], axis=config["axis"]))
        if cls == "Add":
            self.same.append([self._piece_of(p) for p in args[0]])
            return args[0][0]
        if cls == "Where":
            (_, chosen), first, second = args
            chosen = np.asarray(chosen).reshape(-1).astype(bool)
            self.selected[self._piece_of(first)], self.selected[self._piece_of(second)] = chosen, ~chosen
            self.same.append([self._piece_of(first), self._piece_of(second)])
            return first
        if cls == "Activation":
            self.activation = config["activation"]
            return args[0]
        raise ValueError(f"unexpected {cls} {name!r}")

    @staticmethod
    def _along(axis, expected, rank):
        if axis % rank != expected % rank:
            raise ValueError(f"an index op along axis {axis}, not {expected}")

    def _piece(self, piece, x):
        if x[0] == "input":
            self.read_rows[piece] = ("input", x[1].size)
        elif x[0] == "rows":
            self.read_rows[piece] = ("rows", x[1])
        elif x[0] not in ("ids", "table"):
            raise ValueError(f"piece {piece!r} reads something other than the input")
        shape = [1] * self.out_rank
        shape[self.out_axis] = -1
        return ("units", (self.pieces.index(piece) * _BIG + np.arange(self.widths[piece])).reshape(shape))

    def _piece_of(self, value):
        return self.pieces[int(np.asarray(value[1]).reshape(-1)[0]) // _BIG]


_BIG = 1 << 40


# --------------------------------------------------------------------------
# Whole models: split and merge through the model's config


def split(model, targets):
    """A copy of `model` in which each target layer is its nested split model.

    Args:
        model: A built Functional or Sequential model (not changed).
        targets: `{id: (layer, key, plan, kind, rule)}` from `split.plan_layers`,
            each checked with `why_not`.

    Returns:
        The copy (not compiled), its pieces holding the layers' values.
    """
    cuts = _cross_layer_cuts(model, targets)
    producers = {id(producer) for producer, _ in cuts.values()}
    config = _config(model)
    plans = {}
    for layer, key, plan, kind, _ in targets.values():
        if id(layer) in cuts:
            plan = dataclasses.replace(plan, row_cuts=cuts[id(layer)][1])
        _replace(config, key, build(layer, plan, kind, blocks_too=id(layer) in producers))
        plans[key] = (plan, kind.merged_weights(layer))
    for layer, key, _, _, _ in targets.values():
        if id(layer) in cuts:
            _read_blocks(config, key, cuts[id(layer)][0].name, [len(rows) for rows in cuts[id(layer)][1]])

    def fill(key, sub):
        plan, values = plans[key]
        pieces, _ = plan.split_weights(values[0], values[1] if plan.use_bias else None)
        for piece, piece_values in zip(plan.pieces, pieces):
            sub.get_layer(piece_name(sub.name, piece.name)).set_weights(piece_values)

    return _rebuilt(model, config, {key: fill for key in plans})


def _cross_layer_cuts(model, targets):
    """`{id(consumer): (producer, row cuts)}`: split layers that read another split
    layer's output, cut along its unit blocks (cross-layer pruning).

    When a consumer reads the producer's trainable and frozen units as two
    tensors, autodiff computes no gradient towards the frozen block, which
    depends on frozen weights (and on inputs that need none) alone, so the
    consumer's input gradient shrinks to the trainable units'. A pair is cut
    when the producer (Dense or Conv, its units split, an elementwise
    activation) is called once in a plain Functional graph and the consumer
    (Dense or Conv) is called once on its output alone; the cut plan is
    checked like a user's plan, and a consumer whose plan it does not suit
    (a kernel constraint that a row split would change) reads the joined
    output as before.
    """
    from splitnet.errors import SpecError
    from splitnet.spec import Where

    out = {}
    for layer, key, plan, kind, _ in targets.values():
        parent = ([model] + tree.along(model, key))[-2]
        activation = getattr(layer, "activation", None)
        if (
            type(parent) is not Functional
            or kind.name not in CUT_KINDS
            or len(plan.blocks) != 2
            or getattr(activation, "__name__", None) not in ELEMENTWISE
            or len(layer._inbound_nodes) != 1
        ):
            continue
        output = layer._inbound_nodes[0].output_tensors[0]
        if any(output is t for t in parent.outputs):
            continue
        for node in compat.graph_nodes(parent):
            consumer = node.operation
            target = targets.get(id(consumer))
            if target is None or consumer is layer or len(consumer._inbound_nodes) != 1:
                continue
            inputs = node.input_tensors
            if len(inputs) != 1 or inputs[0] is not output or target[3].name not in CUT_KINDS:
                continue
            _, _, consumer_plan, consumer_kind, rule = target
            cut = dataclasses.replace(consumer_plan, row_cuts=plan.blocks)
            try:
                consumer_kind.check_constraints(consumer, rule, cut, Where())
            except SpecError:
                continue  # a constraint a row split would change: read the joined output
            out[id(consumer)] = (layer, plan.blocks)
    return out


# Kinds whose units are the last axis of their output and rows the last of their input.
CUT_KINDS = ("Dense", "Conv")


def _read_blocks(config, key, producer, widths):
    """Make the layer at `key` read `producer`'s unit blocks (its outputs 1, 2, ...)
    instead of its joined output (output 0)."""
    parent_key, _, name = key.rpartition("/")
    entry = saving.config_child(saving.config_entry(config, parent_key), name)
    (node,) = entry["inbound_nodes"]
    ref = node["args"][0]
    refs = []
    for k, width in enumerate(widths):
        part = copy.deepcopy(ref)
        part["config"]["keras_history"][2] = 1 + k
        part["config"]["shape"] = list(part["config"]["shape"][:-1]) + [width]
        refs.append(part)
    node["args"] = [refs] + list(node["args"][1:])


def merge(model):
    """A copy of `model` with each functional split its plain layer again, or None if it has none."""
    layouts = {key: read(layer) for key, layer in tree.walk(model, whole=is_split) if is_split(layer)}
    if not layouts:
        return None
    config = _config(model)
    for key, layout in layouts.items():
        _replace(config, key, layout.plain)
    for key, layout in layouts.items():
        if layout.plan.row_cuts is not None:  # read the producer's joined output again
            _read_joined(config, key, layout.plan.in_dim)
    fills = {key: lambda key, plain: plain.set_weights(layouts[key].merged_weights()) for key in layouts}
    return _rebuilt(model, config, fills, plain=True)


def _read_joined(config, key, width):
    """The inverse of `_read_blocks`: the layer at `key` reads its producer's output 0."""
    parent_key, _, name = key.rpartition("/")
    entry = saving.config_child(saving.config_entry(config, parent_key), name)
    (node,) = entry["inbound_nodes"]
    ref = copy.deepcopy(node["args"][0][0])
    ref["config"]["keras_history"][2] = 0
    ref["config"]["shape"] = list(ref["config"]["shape"][:-1]) + [width]
    node["args"] = [ref] + list(node["args"][1:])


def _config(model):
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)  # compiled by the caller, with a fresh optimizer
    return config


def _replace(config, key, layer):
    """Put `layer` (or its serialization) where the layer at `key` is in a model config,
    called as it was."""
    parent_key, _, name = key.rpartition("/")
    entry = saving.config_child(saving.config_entry(config, parent_key), name)
    if entry is None:
        raise ModelError(f"layer {key!r} is not in the model's config")
    was_functional = entry.get("class_name") == "Functional"
    replacement = copy.deepcopy(layer) if isinstance(layer, dict) else keras.saving.serialize_keras_object(layer)
    cls = keras.saving.get_registered_object(replacement["registered_name"]) if replacement.get("registered_name") else None
    cls = type(layer) if not isinstance(layer, dict) else cls or getattr(keras.layers, replacement["class_name"])
    replacement.update({k: entry[k] for k in ("name", "inbound_nodes") if k in entry})
    # A nested model is called with `mask=`; a Dense takes no such argument.
    accepted = inspect.signature(cls.call).parameters
    for node in replacement.get("inbound_nodes", []):
        if isinstance(node, dict) and "kwargs" in node:
            node["kwargs"] = {k: v for k, v in node["kwargs"].items() if k in accepted}
    entry.clear()
    entry.update(replacement)
    parent = saving.config_entry(config, parent_key).get("config", {})
    if "output_layers" in parent:  # a Functional graph: its references count a nested model's nodes from 1
        shift = int(cls is Functional) - int(was_functional)
        _shift_references(parent, name, shift)


def _shift_references(node, name, shift):
    """Add `shift` to the node index of every reference `[name, node_index, tensor_index]`
    in a Functional config: Keras counts a nested Functional's calls from 1 (its first
    node is its own), a layer's from 0."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "keras_history" and isinstance(value, list) and value and value[0] == name:
                value[1] += shift
            else:
                _shift_references(value, name, shift)
    elif isinstance(node, list):
        if len(node) == 3 and node[0] == name and isinstance(node[1], int) and isinstance(node[2], int):
            node[1] += shift
            return
        for value in node:
            _shift_references(value, name, shift)


def _rebuilt(model, config, fills, plain=False):
    """The model `config` describes, with `model`'s weights: layers at the keys of
    `fills` are filled by `fills[key](key, layer)`, every other layer copied (with
    `plain`, a layer split in place that the config does not hold comes back plain).

    Layers are paired in walk order, as `saving` pairs a copy's: a layer made by
    a subclassed layer's Python code may come back under another automatic name
    (it gets its old one back).
    """
    copy = saving.rebuild(model, config)
    replaced = {id(tree.find(model, key)) for key in fills}
    twins_replaced = {id(tree.find(copy, key)) for key in fills}
    originals = list(tree.walk(model, whole=lambda layer: id(layer) in replaced))
    twins = list(tree.walk(copy, whole=lambda layer: id(layer) in twins_replaced))
    if len(originals) != len(twins):
        raise ModelError(f"model {model.name!r} does not come back from its config with the same layers")
    for (key, layer), (_, twin) in zip(originals, twins):
        if key in fills:
            fills[key](key, twin)
            continue
        kind = kinds.split_kind_of(layer)
        if kind is not None and not isinstance(twin, kind.split):
            # Split in place inside a subclassed layer, whose code made a plain layer again.
            if plain:
                twin.set_weights(kind.merged_weights(layer))
                twin.name = layer.name
                continue
            kind.install(twin, layer.plan, key)
        source, target = tree.own_weights(layer), tree.own_weights(twin)
        if type(layer) is not type(twin) or [tuple(v.shape) for v in source] != [tuple(v.shape) for v in target]:
            raise ModelError(f"model {model.name!r} does not come back from its config with the same layer {key!r}")
        twin.name = layer.name
        for variable, value in zip(target, source):
            variable.assign(value)
    return copy
