"""Dense: `units` are kernel columns (with their bias entries), `rows` kernel rows.

A split Dense stays the same layer object, in the same place, with the
same name and config: its class becomes `SplitDense`, a `Dense` whose
kernel and bias live in trainable and non-trainable pieces (see
`plan.DensePlan`). Because the object itself changes, as with Keras' own
`Dense.enable_lora`, every model that holds it sees the split: a
Functional graph, a nested model, or the Python code of a subclassed layer
such as keras-hub's `TransformerEncoder`.
"""

from __future__ import annotations

import json

import keras
import numpy as np
from keras import ops

from splitnet import compat
from splitnet.errors import ModelError, SpecError
from splitnet.plan import DensePlan, format_indices, resolve, runs

NOTE = "splitnet_split"  # the dataset a split layer writes beside its weights

# Regularizers that add up over pieces (so splitting leaves their gradient
# unchanged), and constraints that act per column (so a column split leaves
# them unchanged).
_ADDITIVE_REGULARIZERS = (keras.regularizers.L1, keras.regularizers.L2, keras.regularizers.L1L2)
_PER_COLUMN_CONSTRAINTS = (keras.constraints.MaxNorm, keras.constraints.UnitNorm, keras.constraints.MinMaxNorm)

# Above this many runs, selecting input rows or restoring the unit order
# with one gather is cheaper than slicing and concatenating.
MAX_SLICES = 16


def _slices(x, segments):
    """`x[..., rows]` for rows given as a few `(start, stop)` runs."""
    parts = [x[..., start:stop] for start, stop in segments]
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)


# From this many features on, a reordering is faster as a gather of rows
# between two transposes: TensorFlow's CPU gather copies whole rows fast and
# single entries slowly (measured on 256 x 2048: 0.5 ms against 1.0 ms; on
# small tensors the transposes cost more than they save).
GATHER_ROWS_FROM = 1024

def _take_last(x, index):
    """`x[..., index]`, by the faster of the two gathers (see GATHER_ROWS_FROM)."""
    if len(x.shape) != 2 or x.shape[-1] is None or x.shape[-1] < GATHER_ROWS_FROM:
        return ops.take(x, index, axis=-1)
    return ops.transpose(ops.take(ops.transpose(x), index, axis=0))


def _permute(x, perm, inverse):
    """`x[..., perm]` whose gradient is the inverse gather, not a scatter-add."""

    @ops.custom_gradient
    def forward(x):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return _take_last(upstream, inverse)

        return _take_last(x, perm), grad

    return forward(x)


class _Variables:
    """The split variables, kept out of Keras' attribute tracking (they are
    tracked once, by `add_weight`)."""

    def __init__(self):
        self.pieces = []  # per plan piece: [kernel] or [kernel, bias]
        self.bias = None  # the separate bias, when `plan.bias_role`


@keras.saving.register_keras_serializable(package="splitnet", name="SplitDense")
class SplitDense(keras.layers.Dense):
    """A `Dense` whose chosen units and input rows are frozen, exactly.

    The kernel and bias are held in pieces (`DensePlan.pieces`): frozen
    pieces are non-trainable variables, so no optimizer, weight decay or
    regularizer touches them, and the optimizer keeps state only for the
    trainable ones. It computes `activation(x @ kernel + bias)` as the
    plain Dense does, and saves the plain Dense's `kernel` and `bias` (plus
    a note of the split), so `merge_model` needs no arithmetic.

    Made by `splitnet.split_model`, which turns a built `Dense` into one in
    place; or from its config (`split` is a `DensePlan` config). Its class
    `__name__` is "Dense" (see below); test for it with `isinstance`.

    Example:
        >>> import keras, numpy as np, splitnet
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
        >>> layer = splitnet.split_model(model, {"d": {"units": [0]}}).get_layer("d")
        >>> isinstance(layer, splitnet.SplitDense), [tuple(w.shape) for w in layer.trainable_weights]
        (True, [(4, 2), (2,)])
    """

    def __init__(self, units, split=None, **kwargs):
        super().__init__(units, **kwargs)
        if split is None:
            raise ValueError("SplitDense needs a split plan. Received: split=None")
        self._init_split(split if isinstance(split, DensePlan) else DensePlan.from_config(split))

    def _init_split(self, plan, key=None):
        self.plan = plan
        self.split_key = key  # the layer's path when it was split, for messages
        self._split = _Variables()
        segments, perm = plan.join_order()
        self._segments = segments
        self._perm = np.asarray(perm, dtype="int32")
        self._inverse = np.argsort(self._perm).astype("int32")
        # Which row block (`plan.row_blocks`) each piece reads, or None for all rows.
        blocks = plan.row_blocks
        self._piece_rows = [None if p.rows is None else blocks.index(p.rows) for p in plan.pieces]
        self._row_runs = [runs(rows) for rows in blocks]
        self._row_index = [np.asarray(rows, dtype="int32") for rows in blocks]
        self._row_inverse = np.argsort(np.concatenate(self._row_index)).astype("int32") if blocks else None

    def build(self, input_shape):
        if input_shape[-1] != self.plan.in_dim:
            raise ValueError(
                f"SplitDense {self.name!r} was split for {self.plan.in_dim} inputs. "
                f"Received: input_shape={input_shape}"
            )
        self._add_split_variables()
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: self.plan.in_dim})

    def _add_split_variables(self):
        """One kernel (and bias) variable per piece; values come from `assign_merged` or loading."""
        for piece in self.plan.pieces:
            rows = self.plan.in_dim if piece.rows is None else len(piece.rows)
            trainable = not piece.frozen
            values = [
                self.add_weight(
                    name=f"{piece.role}_kernel",
                    shape=(rows, len(piece.cols)),
                    initializer="zeros",
                    regularizer=self.kernel_regularizer if trainable else None,
                    constraint=self.kernel_constraint if trainable else None,
                    trainable=trainable,
                )
            ]
            if piece.use_bias:
                values.append(self._bias_variable(f"{piece.role}_bias", len(piece.cols), trainable))
            self._split.pieces.append(values)
        if self.plan.bias_role:
            trainable = self.plan.bias_role == "trainable"
            self._split.bias = self._bias_variable("bias", len(self.plan.trainable_units), trainable)

    def _bias_variable(self, name, size, trainable):
        return self.add_weight(
            name=name,
            shape=(size,),
            initializer="zeros",
            regularizer=self.bias_regularizer if trainable else None,
            constraint=self.bias_constraint if trainable else None,
            trainable=trainable,
        )

    # -- computing --------------------------------------------------------------

    def _row_views(self, inputs):
        """The input's row blocks, each computed once: slices when they are few runs,
        else a gather (measured faster here than one reordering followed by slices)."""
        return [
            _slices(inputs, r) if len(r) <= MAX_SLICES else _take_last(inputs, index)
            for r, index in zip(self._row_runs, self._row_index)
        ]

    def call(self, inputs, training=None):
        views = self._row_views(inputs) if self._row_runs else []
        blocks = [None] * len(self.plan.blocks)
        for piece, values, rows in self._pieces():
            x = inputs if rows is None else views[rows]
            y = ops.matmul(x, values[0])
            blocks[piece.block] = y if blocks[piece.block] is None else ops.add(blocks[piece.block], y)
        # Each block's bias is added once, after its pieces are summed: a
        # BiasAdd feeding an Add is a pattern TensorFlow's oneDNN rewrite
        # fuses, and may fail to run ("Fusion is not implemented: [BiasAdd,Add]").
        blocks = [y if b is None else ops.add(y, b) for y, b in zip(blocks, self._block_biases())]
        joined = self._join(blocks)
        return joined if self.activation is None else self.activation(joined)

    def _join(self, blocks):
        if len(self._segments) == 1:
            return blocks[0]
        if len(self._segments) <= MAX_SLICES:
            parts = []
            for block, start, stop in self._segments:
                x = blocks[block]
                parts.append(x if (start, stop) == (0, x.shape[-1]) else x[..., start:stop])
            return ops.concatenate(parts, axis=-1)
        return _permute(ops.concatenate(blocks, axis=-1), self._perm, self._inverse)

    # -- weights in the plain layer's coordinates -----------------------------------

    def merged_weights(self):
        """`[kernel, bias]` (or `[kernel]`) of the plain Dense, as numpy arrays."""
        pieces = [[np.asarray(v) for v in values] for values in self._split.pieces]
        separate = None if self._split.bias is None else np.asarray(self._split.bias)
        return self.plan.merge_weights(pieces, separate, pieces[0][0].dtype)

    def assign_merged(self, kernel, bias=None):
        """Set the pieces from the plain Dense's `kernel` and `bias`."""
        pieces, separate = self.plan.split_weights(np.asarray(kernel), None if bias is None else np.asarray(bias))
        for variables, values in zip(self._split.pieces, pieces):
            for variable, value in zip(variables, values):
                variable.assign(value)
        if separate is not None:
            self._split.bias.assign(separate)

    @property
    def kernel(self):
        """The plain Dense's kernel, assembled from the pieces with `ops`, so code that
        reads `layer.kernel` (tied weights) works in traced functions and its gradient
        reaches the trainable pieces."""
        blocks = []
        for block in range(len(self.plan.blocks)):
            parts = [(rows, values[0]) for piece, values, rows in self._pieces() if piece.block == block]
            if parts[0][0] is None:  # one piece reads every row
                blocks.append(parts[0][1])
                continue
            stacked = ops.concatenate([k for _, k in sorted(parts, key=lambda part: part[0])], axis=0)
            blocks.append(ops.take(stacked, self._row_inverse, axis=0))
        return self._restore_order(blocks, axis=1)

    @property
    def bias(self):
        """The plain Dense's bias, assembled like `kernel` (None without bias)."""
        if not self.use_bias:
            return None
        return self._restore_order(self._block_biases(), axis=0)

    def _block_biases(self):
        """The bias variable of each column block (None where the block has none)."""
        biases = [None] * len(self.plan.blocks)
        for piece, values, _ in self._pieces():
            if piece.use_bias:
                biases[piece.block] = values[1]
        if self._split.bias is not None:
            biases[0] = self._split.bias
        return biases

    def _pieces(self):
        return zip(self.plan.pieces, self._split.pieces, self._piece_rows)

    def _restore_order(self, blocks, axis):
        joined = blocks[0] if len(blocks) == 1 else ops.concatenate(blocks, axis=axis)
        return joined if len(self._segments) == 1 else ops.take(joined, self._perm, axis=axis)

    def piece_variables(self):
        """`[(mask of the kernel, mask of the bias, variables)]`: which entries each variable set holds."""
        out = []
        for piece, variables in zip(self.plan.pieces, self._split.pieces):
            kernel, bias = self.plan.piece_masks(piece)
            out.append((kernel, bias, variables))
        if self._split.bias is not None:
            kernel = np.zeros((self.plan.in_dim, self.plan.units), dtype=bool)
            out.append((kernel, self.plan.bias_only_mask(), [self._split.bias]))
        return out

    # -- saving: the plain Dense's variables, plus a note ---------------------------

    def save_own_variables(self, store):
        for i, value in enumerate(self.merged_weights()):
            store[str(i)] = value
        note = {"key": self.split_key, "kind": KIND.name, "plan": self.plan.get_config()}
        store[NOTE] = np.frombuffer(json.dumps(note).encode("utf-8"), dtype=np.uint8)

    def load_own_variables(self, store):
        self.assign_merged(store["0"], store["1"] if self.use_bias else None)

    def get_config(self):
        return {**super().get_config(), "split": self.plan.get_config()}

    def enable_lora(self, *args, **kwargs):
        raise NotImplementedError(f"SplitDense {self.name!r}: merge the model before enabling LoRA")

    def quantize(self, *args, **kwargs):
        raise NotImplementedError(f"SplitDense {self.name!r}: merge the model before quantizing it")

    def __repr__(self):
        return f"<SplitDense name={self.name}, built={self.built}>"


# Keras files a layer's weights under its class name (`layers/dense_1/vars`).
# A split Dense saves the plain Dense's weights, under the plain Dense's
# name, so a split model's weights file is laid out as the plain model's:
# a copy through an archive only rewrites the config. (`registered_name`
# stays "SplitDense".)
SplitDense.__name__ = "Dense"


# ------------------------------------------------------------------------------
# What the rest of splitnet asks of a kind.


class _DenseKind:
    name = "Dense"
    plain = keras.layers.Dense
    split = SplitDense
    note = NOTE

    # -- planning -------------------------------------------------------------------

    def plan(self, layer, rule, where):
        """A checked `DensePlan` for `rule` (a `spec.FreezeRule`) on a built Dense."""
        if rule.bias and not layer.use_bias:
            raise where.error(rule.path + ("bias",), f"layer {rule.layer!r} has no bias (use_bias=False)")
        in_dim, units = (int(d) for d in layer.kernel.shape)
        plan = DensePlan(
            in_dim=in_dim,
            units=units,
            use_bias=layer.use_bias,
            frozen_units=() if rule.units is None else resolve(rule.units, units, "units", rule.layer, where),
            frozen_rows=() if rule.rows is None else resolve(rule.rows, in_dim, "input rows", rule.layer, where),
            bias_frozen=bool(rule.bias and layer.use_bias),
        )
        self.check(layer, rule, plan, where)
        return plan

    def check(self, layer, rule, plan, where):
        """Refuse a plan under which the layer's settings would change meaning."""
        path = rule.path
        if getattr(layer, "lora_enabled", False) or layer.lora_rank:
            raise where.error(path, f"layer {rule.layer!r} has LoRA enabled; merge it first")
        if layer.quantization_mode or layer.quantization_config:
            raise where.error(path, f"layer {rule.layer!r} is quantized; splitnet splits float Dense layers")
        for kind in ("kernel", "bias"):
            reg = getattr(layer, f"{kind}_regularizer")
            if reg is not None and not isinstance(reg, _ADDITIVE_REGULARIZERS):
                raise where.error(
                    path,
                    f"layer {rule.layer!r} has a {type(reg).__name__} {kind}_regularizer; only L1/L2 "
                    "regularizers keep their meaning when the weights are split",
                )
        if plan.fully_frozen:
            return
        row_split = any(p.rows is not None for p in plan.pieces)
        column_split = len(plan.blocks) > 1
        constraint = layer.kernel_constraint
        if constraint is not None and not isinstance(constraint, keras.constraints.NonNeg):
            if row_split:
                raise where.error(
                    path + ("rows",),
                    f"layer {rule.layer!r} has a kernel_constraint ({type(constraint).__name__}); it would "
                    "apply to each row piece separately and change its meaning",
                )
            per_column = isinstance(constraint, _PER_COLUMN_CONSTRAINTS) and constraint.axis in (0, -2)
            if column_split and not per_column:
                raise where.error(
                    path + ("units",),
                    f"layer {rule.layer!r} has a kernel_constraint ({type(constraint).__name__}) that is "
                    "not per unit; it would change meaning when the units are split",
                )
        bias_constraint = layer.bias_constraint
        if bias_constraint is not None and column_split and not isinstance(bias_constraint, keras.constraints.NonNeg):
            raise where.error(
                path + ("units",),
                f"layer {rule.layer!r} has a bias_constraint ({type(bias_constraint).__name__}) that "
                "would change meaning when the bias is split",
            )

    # -- installing -----------------------------------------------------------------

    def install(self, layer, plan, key):
        """Turn the built plain Dense `layer` into a `SplitDense` in place, keeping its values."""
        if not layer.built:
            raise ModelError(f"layer {key!r} is not built; call the model on an input first")
        kernel, *bias = [np.asarray(w) for w in layer.get_weights()]
        compat.forget_dense_variables(layer)
        layer.__class__ = SplitDense
        layer._init_split(plan, key)
        with compat.unlocked(layer):
            layer._add_split_variables()
        layer.assign_merged(kernel, bias[0] if bias else None)

    def plan_from_note(self, note):
        return DensePlan.from_config(note["plan"])

    # -- reading --------------------------------------------------------------------

    def masks(self, layer, trainable_ids):
        """Frozen entries of a split or plain Dense, given the ids of the model's trainable variables."""
        if isinstance(layer, SplitDense):
            kernel, bias = layer.plan.kernel_mask(), layer.plan.bias_mask()
            for held_kernel, held_bias, variables in layer.piece_variables():
                if any(id(v) not in trainable_ids for v in variables):
                    kernel |= held_kernel
                    bias |= held_bias
            return {"kernel": kernel, "bias": bias}
        if all(id(w) in trainable_ids for w in layer.weights):
            return None
        return {
            "kernel": np.ones(tuple(layer.kernel.shape), dtype=bool),
            "bias": np.ones((layer.units if layer.use_bias else 0,), dtype=bool),
        }

    def merged_weights(self, layer):
        if isinstance(layer, SplitDense):
            return layer.merged_weights()
        return [np.asarray(w) for w in layer.get_weights()]

    def describe(self, layer, masks):
        """Shape and frozen index sets, for `splitnet inspect`."""
        if isinstance(layer, SplitDense):
            plan = layer.plan
            shape = (plan.in_dim, plan.units)  # not `layer.kernel`, which assembles the pieces
            if plan.fully_frozen:
                units, rows, bias = range(plan.units), (), plan.use_bias
            else:
                units, rows, bias = plan.frozen_units, plan.frozen_rows, plan.bias_frozen
            kind = "split"
        else:
            shape = tuple(int(d) for d in layer.kernel.shape)
            frozen = masks is not None
            units, rows, bias = (range(layer.units) if frozen else ()), (), frozen and layer.use_bias
            kind = "frozen" if frozen else "trainable"
        return {
            "kind": kind,
            "shape": list(shape),
            "frozen_units": format_indices(units),
            "frozen_rows": format_indices(rows),
            "bias_frozen": bool(bias),
        }

    def plain_entry(self, entry):
        """A serialized `SplitDense` -> the serialized plain `Dense` it was split from."""
        config = {k: v for k, v in entry["config"].items() if k != "split"}
        return {**entry, "module": "keras.layers", "class_name": "Dense", "registered_name": None, "config": config}


KIND = _DenseKind()
