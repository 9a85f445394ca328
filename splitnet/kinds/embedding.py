"""Embedding and ReversibleEmbedding: `rows` are token ids, `units` embedding dimensions.

The table has shape (vocabulary, dimensions): `rows` select `table[i, :]`
(the "new tokens train, the old vocabulary stays" case), `units` select
`table[:, j]`. A lookup is not a sum over rows, so the row pieces are joined
by selecting, per token id, the piece that holds its row; the dimension
blocks are joined in the original order.

A tied ReversibleEmbedding (`reverse=True`, the language model's output
layer) computes `x @ table.T` with the table assembled from the same pieces
(one product, logits in token order), and a gradient that gives only the
trainable rows a weight gradient. An untied one's `reverse_embeddings` (dimensions x vocabulary) is
split the same way: the rule's token ids are its frozen columns and the
rule's dimensions its frozen rows.
"""

from __future__ import annotations

import sys

import keras
import numpy as np
from keras import ops

from splitnet import compat
from splitnet.kinds.pieces import PER_UNIT_CONSTRAINTS, Kind, Pieces, SplitLayer, assembled, select, split_class


class _SplitEmbedding(SplitLayer):
    """An Embedding whose chosen token rows and dimensions are frozen, exactly.

    Made by `splitnet.split_model` from a built Embedding, in place; see
    `SplitDense` for how the pieces train, save and merge. `mask_zero` and
    every other argument keep their meaning.

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((3,), dtype="int32")
        >>> model = keras.Model(inputs, keras.layers.Embedding(10, 4, name="e")(inputs))
        >>> layer = splitnet.split_model(model, {"e": {"rows": "0:8"}}, form="in_place").get_layer("e")
        >>> [tuple(w.shape) for w in layer.trainable_weights]
        [(2, 4)]
    """

    kind_name = "Embedding"
    weight_names = ("embeddings",)

    def _init_split(self, plan, key=None):
        super()._init_split(plan, key)
        # Per token id: is it in the first row block, and its position in its block.
        blocks = plan.row_blocks
        self._in_first = np.zeros((plan.in_dim,), dtype=bool)
        self._local = np.zeros((2, plan.in_dim), dtype="int32")
        for k, rows in enumerate(blocks):
            self._local[k, list(rows)] = np.arange(len(rows), dtype="int32")
        if blocks:
            self._in_first[list(blocks[0])] = True

    def _variable_attributes(self):
        return ("_embeddings",)

    def _add_split_variables(self):
        self._tables[0].add_variables(self, self.embeddings_regularizer, self.embeddings_constraint)

    embeddings = assembled(
        "_embeddings", 0, Pieces.kernel, "The whole table, assembled from the pieces (for code that reads it).", settable=False
    )

    def _lookup(self, inputs):
        if inputs.dtype not in ("int32", "int64"):
            inputs = ops.cast(inputs, "int32")
        table = self._tables[0]
        blocks = []
        for block in range(len(table.plan.blocks)):
            parts = sorted((row_block, values[0]) for piece, values, row_block in table.each() if piece.block == block)
            if parts[0][0] is None:  # one piece holds every token's row
                blocks.append(ops.take(parts[0][1], inputs, axis=0))
                continue
            # Two pieces, each some tokens' rows: look each token up in its own.
            (_, first), (_, second) = parts
            chosen = ops.expand_dims(ops.take(self._in_first, inputs, axis=0), -1)
            from_first = ops.take(first, ops.take(self._local[0], inputs, axis=0), axis=0)
            from_second = ops.take(second, ops.take(self._local[1], inputs, axis=0), axis=0)
            blocks.append(ops.where(chosen, from_first, from_second))
        return ops.cast(table.columns(blocks, -1), self.compute_dtype)

    def call(self, inputs):
        return self._lookup(inputs)


class _SplitReversibleEmbedding(_SplitEmbedding):
    """A ReversibleEmbedding (tied or not) whose chosen token rows and dimensions are frozen, exactly.

    `reverse=True` uses the same split table (tied) or the split
    `reverse_embeddings` (untied): a frozen token's logit weights are frozen.

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((3,), dtype="int32")
        >>> embed = keras.layers.ReversibleEmbedding(10, 4, name="e")
        >>> model = keras.Model(inputs, embed(embed(inputs), reverse=True))
        >>> layer = splitnet.split_model(model, {"e": {"rows": "0:8"}}, form="in_place").get_layer("e")
        >>> [tuple(w.shape) for w in layer.trainable_weights]
        [(2, 4)]
    """

    @property
    def weight_names(self):
        return ("embeddings",) if self.tie_weights else ("embeddings", "reverse_embeddings")

    def _make_pieces(self, plan):
        tables = [Pieces(plan, "embeddings")]
        if not self.tie_weights:
            tables.append(Pieces(plan.transposed(), "reverse_embeddings"))
        return tables

    def _variable_attributes(self):
        return ("_embeddings",) if self.tie_weights else ("_embeddings", "reverse_embeddings")

    def _add_split_variables(self):
        super()._add_split_variables()
        if not self.tie_weights:
            self._tables[1].add_variables(self)

    reverse_embeddings = assembled("reverse_embeddings", 1, Pieces.kernel, "The untied reverse kernel, assembled from its pieces.")

    def call(self, inputs, reverse=False):
        if not reverse:
            result = self._lookup(inputs)
            mask = keras.layers.Embedding.compute_mask(self, inputs)  # as ReversibleEmbedding.call
            if mask is not None:
                compat.set_keras_mask(result, mask)
            return result
        dtype = self.reverse_dtype

        def product(x, kernel):
            if dtype is not None:
                x, kernel = ops.cast(x, dtype), ops.cast(kernel, dtype)
            return ops.matmul(x, kernel)

        if self.tie_weights:
            logits = self._tied_logits(inputs, product)
        else:
            logits = self._tables[1].apply(inputs, product, -1, -1)
        if self.logit_soft_cap is not None:
            cap = self.logit_soft_cap
            logits = ops.multiply(ops.tanh(ops.divide(logits, cap)), cap)
        return logits

    def _tied_logits(self, inputs, product):
        """`inputs @ table.T`, with the weight gradient of the trainable rows only.

        The whole table is assembled from its pieces (a copy of the table, much
        cheaper than the product) and multiplied once, so the logits come out
        in token order with no copy of them; the gradient computes the input
        gradient with the whole table and a weight gradient for each trainable
        piece from its tokens' logits and its dimensions' inputs.
        """
        import tensorflow as tf  # the custom gradient is TensorFlow's

        table = self._tables[0]
        plan = table.plan
        if len(plan.pieces) == 1:
            return product(inputs, ops.transpose(table.variables[0][0]))
        # Read out here (the custom gradient takes tensors) in the variables' dtype,
        # as the plain layer's `ops.transpose(self.embeddings)` reads them.
        kernels = [tf.convert_to_tensor(values[0].value) for values in table.variables]

        @tf.custom_gradient
        def forward(x, *kernels):
            whole = table._assemble(kernels)
            logits = product(x, ops.transpose(whole))

            def grad(dlogits):
                dx = ops.cast(ops.matmul(dlogits, ops.cast(whole, dlogits.dtype)), x.dtype)
                grads = []
                for piece, kernel in zip(plan.pieces, kernels):
                    if piece.frozen:
                        grads.append(None)
                        continue
                    tokens = dlogits if piece.rows is None else select(dlogits, piece.rows, -1)
                    features = x if len(piece.cols) == plan.units else select(x, piece.cols, -1)
                    tokens = ops.reshape(tokens, (-1, tokens.shape[-1]))
                    features = ops.cast(ops.reshape(features, (-1, features.shape[-1])), tokens.dtype)
                    grads.append(ops.cast(ops.matmul(ops.transpose(tokens), features), kernel.dtype))
                return (dx, *grads)

            return logits, grad

        return forward(inputs, *kernels)


SplitEmbedding = split_class(keras.layers.Embedding, _SplitEmbedding, "SplitEmbedding")
SplitReversibleEmbedding = split_class(keras.layers.ReversibleEmbedding, _SplitReversibleEmbedding, "SplitReversibleEmbedding")


class _EmbeddingKind(Kind):
    name = "Embedding"

    @property
    def splits(self):
        splits = {keras.layers.Embedding: SplitEmbedding, keras.layers.ReversibleEmbedding: SplitReversibleEmbedding}
        # keras-hub's ReversibleEmbedding is Keras' under another name; if a model
        # has one, keras-hub is loaded (splitnet does not import it).
        hub = sys.modules.get("keras_hub")
        twin = getattr(getattr(hub, "layers", None), "ReversibleEmbedding", None)
        if twin is not None:
            splits[twin] = SplitReversibleEmbedding
        return splits

    def plan(self, layer, rule, where):
        """A checked `KernelPlan`: rows are token ids, units embedding dimensions."""
        self.check_bias(False, rule, where, "an embedding")
        shape = (int(layer.input_dim), int(layer.output_dim))
        plan = self.resolve_plan(rule, where, shape, 0, 1, ("dimensions", "token ids"), False)
        self.check_common(layer, rule, where, regularized=("embeddings",))
        constraint = layer.embeddings_constraint
        if constraint is not None and not plan.fully_frozen and not isinstance(constraint, keras.constraints.NonNeg):
            per_row = isinstance(constraint, PER_UNIT_CONSTRAINTS) and constraint.axis in (1, -1)
            if not per_row or len(plan.blocks) > 1:
                raise where.error(
                    rule.path,
                    f"layer {rule.layer!r} has an embeddings_constraint ({type(constraint).__name__}) that "
                    "would change meaning when the table is split",
                )
        return plan

    # -- the functional form: pieces are Embedding layers ------------------------------
    # Dimensions are joined like any units; token rows by looking each id up in
    # the piece that holds its row (`ops.where` over the two lookups).

    functional_weight_names = ("embeddings",)

    def functional_refusal(self, layer, plan):
        if type(layer) is not keras.layers.Embedding:
            return f"a {type(layer).__name__} also computes logits from its whole table (reverse=True)"
        if layer.mask_zero:
            return "it has mask_zero=True, and its mask would not pass through the joins of its pieces"
        if plan.row_blocks and len(plan.blocks) > 1:
            return "both its token rows and its dimensions are split"
        return super().functional_refusal(layer, plan)

    def functional_input_dtype(self, layer):
        return "int32"

    def functional_axes(self, layer, plan):
        return None, -1, 1, {}

    def functional_candidates(self, piece):
        return [(None, -1, 1, {})]

    def resized(self, config, layer, unit_axis, units, rows=None):
        return {**config, "output_dim": units, "input_dim": config["input_dim"] if rows is None else rows}

    def with_bias(self, config, use_bias, template):
        return config

    def has_bias(self, layer):
        return False

    def piece_config(self, layer, plan, config, piece):
        rows = None if piece.rows is None else len(piece.rows)
        return self.resized(config, layer, 1, len(piece.cols), rows)

    def functional_call(self, layer, plan, inputs, piece, blocks_too=False):
        from splitnet import functional

        if not plan.row_blocks:
            return functional.kernel_call(plan, inputs, piece, None, -1, layer.name, blocks_too)
        first, second = plan.pieces  # the trainable tokens' rows, the frozen tokens' rows
        chosen = np.zeros((plan.in_dim, 1), dtype=bool)
        chosen[list(first.rows)] = True
        looked_up = []
        for p in (first, second):
            local = np.zeros((plan.in_dim,), dtype="int32")
            local[list(p.rows)] = np.arange(len(p.rows), dtype="int32")
            looked_up.append(piece(p, ops.take(local, inputs, axis=0)))
        return ops.where(ops.take(chosen, inputs, axis=0), *looked_up)

    def grow_config(self, layer, plan, config, units, rows):
        """New token ids are `rows` (input_dim), new dimensions `units` (output_dim)."""
        return {**config, "input_dim": config["input_dim"] + rows, "output_dim": config["output_dim"] + units}

    def grow_roles(self, layer, plan, rows=0, units=0):
        """New tokens start from `init`. New dimensions do too, except where an old
        token's new dimensions start at zero: in a tied table, whose dimensions are
        also the inputs of its logits (so an old token's logit does not change), and
        when tokens grow too (the old tokens are then frozen, zero-padded)."""
        tied = getattr(layer, "tie_weights", True) and self._reversible(layer)
        roles = [{0: ("rows", "mean"), 1: ("units", "in" if tied or rows else "out")}]
        if not tied:
            roles.append({0: ("units", "in"), 1: ("rows", "mean")})  # reverse_embeddings
        return roles

    def grow_flow(self, layer, plan):
        return None, True

    def _reversible(self, layer):
        return type(layer) is not keras.layers.Embedding


KIND = _EmbeddingKind()
