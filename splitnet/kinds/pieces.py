"""What every split layer shares: its kernel held in pieces, and the kind protocol.

`Pieces` holds the variables of one split kernel (and its bias), as a
`plan.KernelPlan` lays them out, and computes with them: each piece's
product (a matmul, a convolution, an einsum: the kind says which) on the
input rows it reads, the pieces of a column block summed, each block's bias
added once, the blocks joined in the original unit order. `SplitLayer` is
the mixin of every split layer class: saving the plain layer's weights
plus a note, its config, refusing LoRA and quantization. `Kind` is the base
of every kind object (see `splitnet.kinds`): what spec, split, merge,
verify and inspect ask of a kind, answered from the plan.
"""

from __future__ import annotations

import json

import keras
import numpy as np
from keras import ops

from splitnet import compat
from splitnet.errors import ModelError
from splitnet.plan import KernelPlan, format_indices, join_order, resolve, runs

NOTE = "splitnet_split"  # the dataset a split layer writes beside its weights

# Regularizers that add up over pieces (so splitting leaves their gradient
# unchanged), and constraints that act per unit (so a unit split leaves them
# unchanged).
ADDITIVE_REGULARIZERS = (keras.regularizers.L1, keras.regularizers.L2, keras.regularizers.L1L2)
PER_UNIT_CONSTRAINTS = (keras.constraints.MaxNorm, keras.constraints.UnitNorm, keras.constraints.MinMaxNorm)

# Above this many runs, selecting input rows or restoring the unit order
# with one gather is cheaper than slicing and concatenating.
MAX_SLICES = 16

# From this many features on, a reordering is faster as a gather of rows
# between two transposes: TensorFlow's CPU gather copies whole rows fast and
# single entries slowly (measured on 256 x 2048: 0.5 ms against 1.0 ms; on
# small tensors the transposes cost more than they save).
GATHER_ROWS_FROM = 1024


def axis_slice(x, axis, start, stop):
    """`x[..., start:stop, ...]` along `axis` (negative counts from the end)."""
    if axis < 0:
        return x[(Ellipsis, slice(start, stop)) + (slice(None),) * (-axis - 1)]
    return x[(slice(None),) * axis + (slice(start, stop),)]


def _slices(x, segments, axis):
    """`x` at the indices given as a few `(start, stop)` runs along `axis`."""
    parts = [axis_slice(x, axis, start, stop) for start, stop in segments]
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=axis)


def take(x, index, axis):
    """`ops.take(x, index, axis)`, by the faster of two gathers (see GATHER_ROWS_FROM)."""
    last = axis in (-1, len(x.shape) - 1)
    if not last or len(x.shape) != 2 or x.shape[-1] is None or x.shape[-1] < GATHER_ROWS_FROM:
        return ops.take(x, index, axis=axis)
    return ops.transpose(ops.take(ops.transpose(x), index, axis=0))


def select(x, indices, axis):
    """`x[..., indices, ...]` along `axis`: slices when the indices are a few runs, else a gather."""
    segments = runs(indices)
    if len(segments) <= MAX_SLICES:
        return _slices(x, segments, axis)
    return take(x, np.asarray(indices, dtype="int32"), axis)


def permute(x, perm, inverse, axis):
    """`take(x, perm, axis)` whose gradient is the inverse gather, not a scatter-add."""
    import tensorflow as tf  # the custom gradients here are TensorFlow's

    @tf.custom_gradient
    def forward(x):
        return take(x, perm, axis), lambda upstream: take(upstream, inverse, axis)

    return forward(x)


class Join:
    """Joins blocks (disjoint index sets covering `range(size)`) back into the original order.

    A few contiguous runs are sliced and concatenated; many are concatenated
    once and reordered with one gather (`permute`).
    """

    def __init__(self, blocks, size):
        self.segments, perm = join_order(blocks, size)
        self.perm = np.asarray(perm, dtype="int32")
        self.inverse = np.argsort(self.perm).astype("int32")
        # Where each segment sits in the concatenation of the blocks.
        offsets = np.cumsum([0] + [len(b) for b in blocks])
        self.joined_runs = [(int(offsets[b] + start), int(offsets[b] + stop)) for b, start, stop in self.segments]

    @property
    def identity(self):
        return len(self.segments) == 1

    def __call__(self, blocks, axis):
        if self.identity:
            return blocks[0]
        if len(self.segments) <= MAX_SLICES:
            parts = []
            for block, start, stop in self.segments:
                x = blocks[block]
                whole = (start, stop) == (0, x.shape[axis])
                parts.append(x if whole else axis_slice(x, axis, start, stop))
            return ops.concatenate(parts, axis=axis)
        return permute(ops.concatenate(blocks, axis=axis), self.perm, self.inverse, axis)

    def restore(self, joined, axis):
        """Reorder the concatenation of the blocks (a weight, not an activation): a few
        slices when the order is a few runs (new tokens appended), else one gather."""
        if self.identity:
            return joined
        if len(self.segments) <= MAX_SLICES:
            parts = [axis_slice(joined, axis, start, stop) for start, stop in self.joined_runs]
            return ops.concatenate(parts, axis=axis)
        return ops.take(joined, self.perm, axis=axis)


class Pieces:
    """The variables of one split kernel (and its bias), and the computation over them.

    Not a layer: the variables are made by the layer's `add_weight` (so Keras
    tracks and saves them once) and held here, out of Keras' attribute
    tracking.

    Args:
        plan: The `KernelPlan`.
        name: The plain layer's name of the kernel weight ("kernel",
            "embeddings", ...); pieces are named `ROLE_NAME`.
    """

    def __init__(self, plan, name="kernel"):
        self.plan = plan
        self.name = name
        self.variables = []  # per plan piece: [kernel] or [kernel, bias]
        self.bias = None  # the separate bias, when `plan.bias_role`
        self.columns = Join(plan.blocks, plan.units)
        blocks = plan.row_blocks
        # Which row block each piece reads, or None for all rows.
        self.piece_rows = [None if p.rows is None else blocks.index(p.rows) for p in plan.pieces]
        self.row_runs = [runs(rows) for rows in blocks]
        self.row_index = [np.asarray(rows, dtype="int32") for rows in blocks]
        self.rows = Join(blocks, plan.in_dim) if blocks else None

    def add_variables(self, layer, regularizer=None, constraint=None, bias_regularizer=None, bias_constraint=None):
        """Make the piece variables on `layer` (values come from `assign` or loading).

        Frozen pieces get no regularizer and no constraint: nothing may touch them.
        """
        plan = self.plan
        for piece in plan.pieces:
            trainable = not piece.frozen
            values = [
                layer.add_weight(
                    name=f"{piece.role}_{self.name}",
                    shape=plan.piece_shape(piece),
                    initializer="zeros",
                    regularizer=regularizer if trainable else None,
                    constraint=constraint if trainable else None,
                    trainable=trainable,
                )
            ]
            if piece.use_bias:
                values.append(
                    layer.add_weight(
                        name=f"{piece.role}_bias",
                        shape=plan.bias_piece_shape(piece.cols),
                        initializer="zeros",
                        regularizer=bias_regularizer if trainable else None,
                        constraint=bias_constraint if trainable else None,
                        trainable=trainable,
                    )
                )
            self.variables.append(values)
        if plan.bias_role:
            trainable = plan.bias_role == "trainable"
            self.bias = layer.add_weight(
                name="bias",
                shape=plan.bias_piece_shape(plan.separate_bias_units),
                initializer="zeros",
                regularizer=bias_regularizer if trainable else None,
                constraint=bias_constraint if trainable else None,
                trainable=trainable,
            )

    def each(self):
        """`(piece, [kernel (, bias)], index of its row block or None)` for every piece."""
        return zip(self.plan.pieces, self.variables, self.piece_rows)

    # -- computing --------------------------------------------------------------

    def row_views(self, x, axis):
        """The input's row blocks along `axis`, each computed once: slices when they
        are few runs, else a gather (measured faster here than one reordering
        followed by slices)."""
        return [
            _slices(x, r, axis) if len(r) <= MAX_SLICES else take(x, index, axis)
            for r, index in zip(self.row_runs, self.row_index)
        ]

    def apply(self, x, product, in_axis, out_axis):
        """The plain layer's output before its activation.

        Args:
            x: The input.
            product: `product(x_rows, kernel_piece)` -> that piece's output.
            in_axis: The rows axis in `x`.
            out_axis: The units axis in the output.
        """
        joined = self.columns(self.blocks(x, product, in_axis), out_axis)
        if self.bias is not None and not self.plan.bias_per_unit:
            joined = ops.add(joined, self.bias)  # shared by all units: added after the join
        return joined

    def blocks(self, x, product, in_axis, views=None):
        """Each column block's output (with its bias), before the join.

        `views`: the input's row blocks, when the caller has them apart
        already (then `x` is not read).
        """
        if views is None:
            views = self.row_views(x, in_axis) if self.row_runs else []
        blocks = [None] * len(self.plan.blocks)
        for piece, values, row_block in self.each():
            y = product(x if row_block is None else views[row_block], values[0])
            blocks[piece.block] = y if blocks[piece.block] is None else ops.add(blocks[piece.block], y)
        # Each block's bias is added once, after its pieces are summed: a
        # BiasAdd feeding an Add is a pattern TensorFlow's oneDNN rewrite
        # fuses, and may fail to run ("Fusion is not implemented: [BiasAdd,Add]").
        return [y if b is None else ops.add(y, b) for y, b in zip(blocks, self.block_biases())]

    def block_biases(self):
        """The bias variable of each column block (None where the block has none)."""
        biases = [None] * len(self.plan.blocks)
        for piece, values, _ in self.each():
            if piece.use_bias:
                biases[piece.block] = values[1]
        if self.bias is not None and self.plan.bias_per_unit:
            biases[0] = self.bias  # the trainable columns' bias, held on its own
        return biases

    def apply_whole(self, x, product, input_grad, kernel_grad, in_axis, out_axis):
        """The plain layer's output before its activation, from the whole kernel.

        For operations whose narrower pieces run slower per entry than the
        whole (a convolution): the kernel is assembled from the pieces (a small
        copy), the forward pass and the input gradient use it whole, and the
        gradient computes the weight gradient of the trainable pieces only,
        each from the input rows and output units it holds. The frozen
        pieces get no gradient at all.

        Args:
            x: The input.
            product: `product(x, kernel)`.
            input_grad: `input_grad(x, kernel, dy)` -> the gradient for `x`.
            kernel_grad: `kernel_grad(x_rows, dy_units, piece_shape)` -> a piece's gradient.
            in_axis, out_axis: The rows axis in `x` and the units axis in the output.
        """
        import tensorflow as tf  # the gradient kernels are TensorFlow's

        plan = self.plan
        # Read the variables out here (the custom gradient takes tensors), in the
        # input's dtype as Keras' autocasting would (mixed precision).
        kernels = [ops.cast(tf.convert_to_tensor(values[0].value), x.dtype) for values in self.variables]
        piece_shapes = [plan.piece_shape(piece) for piece in plan.pieces]
        unit_index = [None if len(cols) == plan.units else cols for cols in plan.blocks]

        @tf.custom_gradient
        def forward(x, *kernels):
            kernel = self._assemble(kernels)
            y = product(x, kernel)

            def grad(dy):
                views = self.row_views(x, in_axis) if self.row_runs else []
                grads = []
                for piece, row_block, shape in zip(plan.pieces, self.piece_rows, piece_shapes):
                    if piece.frozen:
                        grads.append(None)
                        continue
                    index = unit_index[piece.block]
                    dy_units = dy if index is None else select(dy, index, out_axis)
                    grads.append(kernel_grad(x if row_block is None else views[row_block], dy_units, shape))
                return (input_grad(x, kernel, dy), *grads)

            return y, grad

        y = forward(x, *kernels)
        bias = self.bias_value()  # assembled: a few entries
        return y if bias is None else ops.add(y, bias)

    def kernel(self):
        """The whole kernel, assembled from the pieces with `ops`, so code that reads
        it (tied weights) works in traced functions and its gradient reaches the
        trainable pieces."""
        return self._assemble([values[0] for values in self.variables])

    def _assemble(self, kernels):
        plan = self.plan
        blocks = []
        for block in range(len(plan.blocks)):
            parts = [(row_block, k) for piece, k, row_block in zip(plan.pieces, kernels, self.piece_rows) if piece.block == block]
            if parts[0][0] is None:  # one piece reads every row
                blocks.append(parts[0][1])
                continue
            stacked = ops.concatenate([k for _, k in sorted(parts, key=lambda part: part[0])], axis=plan.row_axis)
            blocks.append(self.rows.restore(stacked, plan.row_axis))
        joined = blocks[0] if len(blocks) == 1 else ops.concatenate(blocks, axis=plan.unit_axis)
        return self.columns.restore(joined, plan.unit_axis)

    def bias_value(self):
        """The whole bias, assembled like `kernel` (None without bias)."""
        plan = self.plan
        if not plan.use_bias:
            return None
        if not plan.bias_per_unit:
            return self.bias if self.bias is not None else self.variables[0][1]
        biases = self.block_biases()
        joined = biases[0] if len(biases) == 1 else ops.concatenate(biases, axis=plan.bias_axis)
        return self.columns.restore(joined, plan.bias_axis)

    # -- values in the plain layer's coordinates ---------------------------------

    def merged(self):
        """`[kernel, bias]` (or `[kernel]`) of the plain layer, as numpy arrays."""
        pieces = [[np.asarray(v) for v in values] for values in self.variables]
        separate = None if self.bias is None else np.asarray(self.bias)
        return self.plan.merge_weights(pieces, separate, pieces[0][0].dtype)

    def assign(self, kernel, bias=None):
        """Set the pieces from the plain layer's kernel and bias."""
        pieces, separate = self.plan.split_weights(np.asarray(kernel), None if bias is None else np.asarray(bias))
        for variables, values in zip(self.variables, pieces):
            for variable, value in zip(variables, values):
                variable.assign(value)
        if separate is not None:
            self.bias.assign(separate)

    def piece_variables(self):
        """`[(kernel mask, bias mask, variables)]`: which entries each variable set holds."""
        plan = self.plan
        held = [(*plan.piece_masks(piece), values) for piece, values in zip(plan.pieces, self.variables)]
        if self.bias is not None:
            held.append((np.zeros(plan.kernel_shape, bool), plan.bias_only_mask(), [self.bias]))
        return held

    def masks(self, trainable_ids):
        """(kernel mask, bias mask): True where frozen by the plan, or held by a
        variable `fit` does not train (`trainable = False` on the layer or a parent)."""
        kernel, bias = self.plan.kernel_mask(), self.plan.bias_mask()
        for held_kernel, held_bias, variables in self.piece_variables():
            if any(id(v) not in trainable_ids for v in variables):
                kernel |= held_kernel
                bias |= held_bias
        return kernel, bias


def _layout(layer):
    """The `functional.Layout` of a functional split (a nested model of pieces), or None."""
    from splitnet import functional  # functional builds on the kinds

    return functional.read(layer)


def assembled(name, table, assemble, doc, settable=True):
    """A property for a weight of the plain layer that the split layer assembles from pieces.

    While the plain layer's `build` runs (in `SplitLayer.build`, before the
    pieces exist) it reads and, if `settable`, sets the value the plain build
    keeps under `name`; `SplitLayer.build` then drops that value. After, it is
    `assemble(self._tables[table])`, with `ops`, so code that reads it (tied
    weights) works in traced functions and its gradient reaches the pieces.
    """

    def get(self):
        if name in self.__dict__ or not self._tables[table].variables:
            return self.__dict__.get(name)
        return assemble(self._tables[table])

    def set_(self, value):
        self.__dict__[name] = value

    return property(get, set_ if settable else None, doc=doc)


class SplitLayer:
    """Mixin of every split layer class: a plain Keras layer whose weights are held in `Pieces`.

    A split layer stays the same object, in the same place, with the same
    name and config (plus `split`): `Kind.install` changes its class, as
    Keras' own `Dense.enable_lora` changes its variables, so every model
    that holds it sees the split. It saves the plain layer's weights plus a
    note of its split, so a merge needs no arithmetic.

    Subclasses set `kind_name` and `weight_names`, and implement
    `_make_pieces(plan)` -> list of `Pieces` (in `weight_names` order),
    `_variable_attributes()` (where the plain layer keeps its variables)
    and `_add_split_variables()`.
    """

    kind_name = None
    weight_names = ("kernel", "bias")
    plain = None  # registered name of the plain class, when it is not the split class's base

    def __init__(self, *args, split=None, plain=None, **kwargs):
        super().__init__(*args, **kwargs)
        if split is None:
            raise ValueError(f"Split{type(self).__name__} needs a split plan. Received: split=None")
        self.plain = plain
        self._init_split(split if isinstance(split, KernelPlan) else KernelPlan.from_config(split))

    def _init_split(self, plan, key=None):
        self.plan = plan
        self.split_key = key  # the layer's path when it was split, for messages
        self._tables = self._make_pieces(plan)

    def _make_pieces(self, plan):
        return [Pieces(plan)]

    def _variable_attributes(self):
        return ("_kernel", "bias")

    def build(self, input_shape):
        # The plain layer's build sets up everything besides the variables
        # (input spec, output shapes); its variables are then replaced by the
        # pieces, whose values come from loading or `assign_merged`.
        super().build(input_shape)
        first = self.__dict__[self._variable_attributes()[0]]
        if tuple(first.shape) != self.plan.kernel_shape:
            raise ValueError(
                f"Split{type(self).__name__} {self.name!r} was split for a kernel of shape "
                f"{self.plan.kernel_shape}. Received: input_shape={input_shape}"
            )
        compat.forget_variables(self, self._variable_attributes())
        self._add_split_variables()

    def merged_weights(self):
        """The plain layer's weights, as numpy arrays, in its own order."""
        return [value for pieces in self._tables for value in pieces.merged()]

    def assign_merged(self, *values):
        """Set the pieces from the plain layer's weights (in `merged_weights` order)."""
        values = list(values)
        for pieces in self._tables:
            kernel = values.pop(0)
            bias = values.pop(0) if pieces.plan.use_bias else None
            pieces.assign(kernel, bias)

    def piece_variables(self):
        """`[(kernel mask, bias mask, variables)]` of the (first) kernel's pieces."""
        return self._tables[0].piece_variables()

    def weight_masks(self, trainable_ids):
        """`{weight name: bool mask}` in the plain layer's coordinates."""
        out, names = {}, iter(self.weight_names)
        for pieces in self._tables:
            kernel, bias = pieces.masks(trainable_ids)
            out[next(names)] = kernel
            if "bias" in self.weight_names:  # also (0,) without bias, as for a plain layer
                out[next(names)] = bias
        return out

    def save_own_variables(self, store):
        for i, value in enumerate(self.merged_weights()):
            store[str(i)] = value
        note = {"key": self.split_key, "kind": self.kind_name, "plan": self.plan.get_config()}
        store[NOTE] = np.frombuffer(json.dumps(note).encode("utf-8"), dtype=np.uint8)

    def load_own_variables(self, store):
        count = sum(1 + int(pieces.plan.use_bias) for pieces in self._tables)
        self.assign_merged(*[store[str(i)] for i in range(count)])

    def get_config(self):
        config = {**super().get_config(), "split": self.plan.get_config()}
        if self.plain is not None:
            config["plain"] = self.plain
        return config

    def enable_lora(self, *args, **kwargs):
        raise NotImplementedError(f"split layer {self.name!r}: merge the model before enabling LoRA")

    def quantize(self, *args, **kwargs):
        raise NotImplementedError(f"split layer {self.name!r}: merge the model before quantizing it")

    def __repr__(self):
        return f"<Split{type(self).__name__} name={self.name}, built={self.built}>"


class KernelSplitLayer(SplitLayer):
    """A split layer with a `kernel` and an optional `bias` (Dense, Conv, EinsumDense).

    Subclasses implement `call` with `self._tables[0].apply(inputs, product,
    in_axis, out_axis)`.
    """

    def _add_split_variables(self):
        self._tables[0].add_variables(
            self, self.kernel_regularizer, self.kernel_constraint, self.bias_regularizer, self.bias_constraint
        )

    @property
    def kernel(self):
        """The plain layer's kernel, assembled from the pieces (for code that reads it)."""
        return self._tables[0].kernel()

    bias = assembled("bias", 0, Pieces.bias_value, "The plain layer's bias, assembled like `kernel` (None without bias).")


def split_class(plain, base, registered):
    """The registered split class of a plain layer class: `base` (a `SplitLayer` mixin) + `plain`.

    Keras files a layer's weights under its class name (`layers/dense_1/vars`);
    the split class keeps the plain one's `__name__`, so a split model's
    weights file is laid out as the plain model's, and a copy through an
    archive only rewrites the config. (`registered_name` stays `registered`.)
    """
    cls = type(registered, (base, plain), {"__module__": base.__module__, "__qualname__": registered})
    cls = keras.saving.register_keras_serializable(package="splitnet", name=registered)(cls)
    cls.__name__ = plain.__name__
    return cls


class Kind:
    """What the rest of splitnet asks of a layer kind (see `splitnet.kinds`).

    Subclasses set `name` and `splits` (`{plain class: split class}`) and
    implement `plan(layer, rule, where)`.
    """

    name = None
    splits = {}
    note = NOTE
    takes_axis = False  # whether a rule may pick its axes by `axis: LETTER`

    @property
    def plains(self):
        return tuple(self.splits)

    @property
    def split(self):
        return tuple(self.splits.values())

    # -- checks shared by kinds -------------------------------------------------------

    @staticmethod
    def resolve_plan(rule, where, shape, row_axis, unit_axis, nouns, use_bias, **bias):
        """The `KernelPlan` of `rule` on a kernel of `shape`, its index sets resolved.

        `nouns`: what units and rows are called in messages ("filters", ...);
        `bias`: `bias_shape` and `bias_axis` for a bias that is not `(units,)`.
        """
        in_dim, units = shape[row_axis], shape[unit_axis]
        plain_2d = len(shape) == 2 and (row_axis, unit_axis) == (0, 1)
        return KernelPlan(
            in_dim=in_dim,
            units=units,
            use_bias=use_bias,
            frozen_units=() if rule.units is None else resolve(rule.units, units, nouns[0], rule.layer, where),
            frozen_rows=() if rule.rows is None else resolve(rule.rows, in_dim, nouns[1], rule.layer, where),
            bias_frozen=bool(rule.bias and use_bias),
            shape=None if plain_2d else tuple(shape),
            row_axis=row_axis,
            unit_axis=unit_axis,
            **bias,
        )

    @staticmethod
    def check_bias(has_bias, rule, where, why="use_bias=False"):
        if rule.bias and not has_bias:
            raise where.error(rule.path + ("bias",), f"layer {rule.layer!r} has no bias ({why})")

    @staticmethod
    def check_common(layer, rule, where, regularized=("kernel", "bias")):
        """Refuse what no kind can split: LoRA, quantization, non-additive regularizers."""
        path = rule.path
        if getattr(layer, "lora_enabled", False) or getattr(layer, "lora_rank", None):
            raise where.error(path, f"layer {rule.layer!r} has LoRA enabled; merge it first")
        if getattr(layer, "quantization_mode", None) or getattr(layer, "quantization_config", None):
            raise where.error(path, f"layer {rule.layer!r} is quantized; splitnet splits float layers")
        for weight in regularized:
            reg = getattr(layer, f"{weight}_regularizer", None)
            if reg is not None and not isinstance(reg, ADDITIVE_REGULARIZERS):
                raise where.error(
                    path,
                    f"layer {rule.layer!r} has a {type(reg).__name__} {weight}_regularizer; only L1/L2 "
                    "regularizers keep their meaning when the weights are split",
                )

    @staticmethod
    def check_constraints(layer, rule, plan, where, per_unit_axes=(0, -2), kernel="kernel"):
        """Refuse constraints whose meaning a split would change.

        A kernel constraint applies to each piece separately: harmless for
        `NonNeg`, and for a per-unit norm (`MaxNorm` over the axes other than
        units: `per_unit_axes`) when only units are split.
        """
        if plan.fully_frozen:
            return
        path = rule.path
        row_split = any(p.rows is not None for p in plan.pieces)
        column_split = len(plan.blocks) > 1
        constraint = getattr(layer, f"{kernel}_constraint", None)
        if constraint is not None and not isinstance(constraint, keras.constraints.NonNeg):
            if row_split:
                raise where.error(
                    path + ("rows",),
                    f"layer {rule.layer!r} has a {kernel}_constraint ({type(constraint).__name__}); it would "
                    "apply to each row piece separately and change its meaning",
                )
            axis = getattr(constraint, "axis", None)
            per_unit = isinstance(constraint, PER_UNIT_CONSTRAINTS) and (
                axis in per_unit_axes or (isinstance(axis, (list, tuple)) and tuple(axis) in per_unit_axes)
            )
            if column_split and not per_unit:
                raise where.error(
                    path + ("units",),
                    f"layer {rule.layer!r} has a {kernel}_constraint ({type(constraint).__name__}) that is "
                    "not per unit; it would change meaning when the units are split",
                )
        bias_constraint = getattr(layer, "bias_constraint", None)
        if bias_constraint is not None and column_split and not isinstance(bias_constraint, keras.constraints.NonNeg):
            raise where.error(
                path + ("units",),
                f"layer {rule.layer!r} has a bias_constraint ({type(bias_constraint).__name__}) that "
                "would change meaning when the bias is split",
            )

    # -- installing -------------------------------------------------------------------

    def install(self, layer, plan, key):
        """Turn the built plain `layer` into its split class in place, keeping its values."""
        if not layer.built:
            raise ModelError(f"layer {key!r} is not built; call the model on an input first")
        values = [np.asarray(w) for w in self.plain_weights(layer)]
        plain, layer.__class__ = type(layer), self.splits[type(layer)]
        if plain not in layer.__class__.__mro__:  # e.g. keras-hub's twin of a Keras layer
            layer.plain = keras.saving.get_registered_name(plain)
        compat.forget_variables(layer, layer._variable_attributes())
        layer._init_split(plan, key)
        with compat.unlocked(layer):
            layer._add_split_variables()
        layer.assign_merged(*values)

    def plain_weights(self, layer):
        """The plain layer's weights in `weight_names` order."""
        return layer.get_weights()

    def plan_from_note(self, note):
        return KernelPlan.from_config(note["plan"])

    # -- reading ----------------------------------------------------------------------

    def masks(self, layer, trainable_ids):
        """`{weight name: bool array}` in the plain layer's coordinates, True where frozen
        (split, or plain and not trainable), or None when nothing is frozen."""
        if isinstance(layer, self.split):
            return layer.weight_masks(trainable_ids)
        layout = _layout(layer)
        if layout is not None:
            return layout.masks(trainable_ids)
        if all(id(w) in trainable_ids for w in layer.weights):
            return None
        names = self.weight_names_of(layer)
        out = {name: np.ones(np.shape(w), dtype=bool) for name, w in zip(names, self.plain_weights(layer))}
        if names[0] == "kernel" and "bias" not in out:
            out["bias"] = np.zeros((0,), dtype=bool)  # as for a split layer without bias
        return out

    def weight_names_of(self, layer):
        """The names of the layer's weights in the plain layer, in `merged_weights` order."""
        if isinstance(layer, self.split):
            return tuple(name for name in layer.weight_names if name != "bias" or layer.plan.use_bias)
        layout = _layout(layer)
        if layout is not None:
            return tuple(n for n in self.functional_weight_names if n != "bias" or layout.plan.use_bias)
        return tuple(w.name for w in layer.weights)

    def plan_of(self, layer):
        """The plan of a split layer, in place or functional; None for a plain layer."""
        if isinstance(layer, self.split):
            return layer.plan
        layout = _layout(layer)
        return None if layout is None else layout.plan

    def merged_weights(self, layer):
        if isinstance(layer, self.split):
            return layer.merged_weights()
        layout = _layout(layer)
        if layout is not None:
            return layout.merged_weights()
        return [np.asarray(w) for w in self.plain_weights(layer)]

    def describe(self, layer, masks):
        """Shape and frozen index sets, for `splitnet inspect`."""
        plan = self.plan_of(layer)
        if plan is not None:
            shape = plan.kernel_shape
            if plan.fully_frozen:
                units, rows, bias = range(plan.units), (), plan.use_bias
            else:
                units, rows, bias = plan.frozen_units, plan.frozen_rows, plan.bias_frozen
            kind = "split"
        else:
            shape = tuple(int(d) for d in np.shape(self.plain_weights(layer)[0]))
            frozen = masks is not None
            units, rows = (("all",) if frozen else ()), ()
            bias = frozen and getattr(layer, "use_bias", False)
            kind = "frozen" if frozen else "trainable"
        return {
            "kind": kind,
            "form": None if plan is None else "in place" if isinstance(layer, self.split) else "functional",
            "type": self.name,
            "shape": list(shape),
            "frozen_units": "all" if units == ("all",) else format_indices(units),
            "frozen_rows": format_indices(rows),
            "bias_frozen": bool(bias),
            "grown": self.describe_growth(layer),
        }

    def describe_growth(self, layer):
        """What `grow_model` added, e.g. "units 5->10", or None."""
        plan = self.plan_of(layer)
        grown_from = None if plan is None else plan.grown_from
        if grown_from is None:
            return None
        sizes = (("rows", grown_from[0], plan.in_dim), ("units", grown_from[1], plan.units))
        return ", ".join(f"{word} {old}->{new}" for word, old, new in sizes if new != old)

    def picture(self, layer, masks):
        """A 2-D (rows x units) map of the first weight's frozen entries, for `--plot`:
        the fraction frozen of each (row, unit) pair over the kernel's other axes."""
        mask = next(iter(masks.values()))
        plan = self.plan_of(layer)
        if plan is not None:
            front = np.moveaxis(mask, (plan.row_axis, plan.unit_axis), (0, 1))
        else:
            front = mask.reshape((-1, mask.shape[-1])) if mask.ndim != 2 else mask
        return front.reshape(front.shape[:2] + (-1,)).mean(axis=-1)

    # -- the functional form (see `splitnet.functional`) -------------------------------
    # A kernel kind's pieces are layers of its own class, each reading its input
    # rows along the tensor axis of the kernel's rows and computing its units
    # along the output axis of the kernel's units.

    functional_weight_names = ("kernel", "bias")

    def functional_refusal(self, layer, plan):
        """Why `layer`, split by `plan`, cannot be a graph of plain pieces; None if it can."""
        if plan.bias_role:
            return (
                "its bias would be held apart from every kernel piece (bias: true without frozen rows, every "
                "row frozen while the bias trains, or a bias without the units axis), and no Keras layer holds "
                "a bias alone"
            )
        if getattr(layer, "activity_regularizer", None) is not None:
            return "it has an activity_regularizer, which would apply to each piece's partial output"
        for name, value in vars(layer).items():
            if isinstance(value, keras.initializers.Constant) and np.ndim(keras.ops.convert_to_numpy(value.value)):
                return f"its {name.strip('_')} is a Constant of the layer's shape, which no piece can take"
        return None

    def functional_input_dtype(self, layer):
        return None  # the default float type; the pieces cast as the plain layer does

    def functional_axes(self, layer, plan):
        """`(rows axis of the input, units axis of the output, units axis of the kernel, rule extras)`."""
        return -1, -1, plan.unit_axis, {}

    def functional_candidates(self, piece):
        """The `functional_axes` a split read back may have, given one of its pieces."""
        n = len(piece.kernel.shape)
        return [(-1, -1, n - 1, {})]

    def resized(self, config, layer, unit_axis, units, rows=None):
        """`config` with `units` units (`rows` applies to kinds whose rows are not the input's)."""
        return {**config, self.units_key: units}

    def with_bias(self, config, use_bias, template):
        return {**config, "use_bias": use_bias}

    def has_bias(self, layer):
        return bool(getattr(layer, "use_bias", False))

    def piece_config(self, layer, plan, config, piece):
        """The config of the plain layer that computes `piece` (without activation)."""
        unit_axis = self.functional_axes(layer, plan)[2]
        rows = None if piece.rows is None else len(piece.rows)
        config = self.resized(config, layer, unit_axis, len(piece.cols), rows)
        return {**self.with_bias(config, piece.use_bias, layer), "activation": "linear"}

    def functional_call(self, layer, plan, inputs, piece, blocks_too=False):
        """The split layer's output (before its activation) from `inputs`; `piece(p, x)`
        calls the layer made for plan piece `p` on `x`. With `blocks_too`:
        `(output, [each unit block's output])`."""
        from splitnet import functional

        in_axis, out_axis, _, _ = self.functional_axes(layer, plan)
        return functional.kernel_call(plan, inputs, piece, in_axis, out_axis, layer.name, blocks_too)

    # -- growing (see `splitnet.grow`) -------------------------------------------------

    units_key = None  # the config argument that counts the units ("units", "filters")

    def grow_config(self, layer, plan, config, units, rows):
        """`config` with `units` more units (rows that come from the input need no change)."""
        return {**config, self.units_key: config[self.units_key] + units}

    def grow_roles(self, layer, plan, rows=0, units=0):
        """How each weight (in `merged_weights` order) grows: `{axis: (count, role)}`.

        `count` ("rows" or "units") is how much the axis grows by. `role` is
        "in" for an axis of inputs: its new entries start at zero where they
        meet old outputs, so old outputs do not change; "out" for an axis of
        outputs: new entries start from the rule's `init`; "mean": an "out"
        axis that `init: mean` averages over. `rows` and `units`: how much
        the layer grows.
        """
        roles = [{plan.row_axis: ("rows", "in"), plan.unit_axis: ("units", "mean")}]
        if plan.use_bias:
            roles.append({} if plan.bias_axis is None else {plan.bias_axis: ("units", "mean")})
        return roles

    def grow_flow(self, layer, plan):
        """`(rows, units)`: whether the rows are the last axis of the layer's input (None
        when they are not a tensor axis: an embedding's token ids), and whether the units
        are the last axis of its output. Growth moves along last axes only."""
        return True, True

    def plain_entry(self, entry):
        """A serialized split layer -> the serialized plain layer it was split from."""
        config = {k: v for k, v in entry["config"].items() if k not in ("split", "plain")}
        split = keras.saving.get_registered_object(entry.get("registered_name") or "")
        if entry["config"].get("plain"):
            plain = keras.saving.get_registered_object(entry["config"]["plain"])
            if plain is None:
                raise ModelError(f"layer {config.get('name')!r} was a {entry['config']['plain']}; import its library")
        else:
            plain = next(p for p in split.__mro__[1:] if p in self.splits and self.splits[p] is split)
        template = keras.saving.serialize_keras_object(plain.from_config(config))
        keys = ("module", "class_name", "registered_name")
        return {**entry, **{k: template.get(k) for k in keys}, "config": config}
