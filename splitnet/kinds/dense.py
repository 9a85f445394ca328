"""Dense: `units` are kernel columns (with their bias entries), `rows` kernel rows.

A split Dense stays the same layer object, in the same place, with the
same name and config: its class becomes `SplitDense`, a `Dense` whose
kernel and bias live in trainable and non-trainable pieces (see
`plan.KernelPlan` and `pieces.Pieces`).
"""

from __future__ import annotations

import keras
from keras import ops

from splitnet.kinds.pieces import Kind, KernelSplitLayer, split_class


class _SplitDense(KernelSplitLayer):
    """A `Dense` whose chosen units and input rows are frozen, exactly.

    The kernel and bias are held in pieces (`KernelPlan.pieces`): frozen
    pieces are non-trainable variables, so no optimizer, weight decay or
    regularizer touches them, and the optimizer keeps state only for the
    trainable ones. It computes `activation(x @ kernel + bias)` as the
    plain Dense does, and saves the plain Dense's `kernel` and `bias` (plus
    a note of the split), so `merge_model` needs no arithmetic.

    Made by `splitnet.split_model`, which turns a built `Dense` into one in
    place; or from its config (`split` is a `KernelPlan` config). Its class
    `__name__` is "Dense" (see `pieces.split_class`); test for it with
    `isinstance`.

    Example:
        >>> import keras, numpy as np, splitnet
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
        >>> layer = splitnet.split_model(model, {"d": {"units": [0]}}, form="in_place").get_layer("d")
        >>> isinstance(layer, splitnet.SplitDense), [tuple(w.shape) for w in layer.trainable_weights]
        (True, [(4, 2), (2,)])
    """

    kind_name = "Dense"

    def call(self, inputs, training=None):
        y = self._tables[0].apply(inputs, ops.matmul, -1, -1)
        return y if self.activation is None else self.activation(y)


SplitDense = split_class(keras.layers.Dense, _SplitDense, "SplitDense")
SplitDense.__doc__ = _SplitDense.__doc__


class _DenseKind(Kind):
    name = "Dense"
    splits = {keras.layers.Dense: SplitDense}
    units_key = "units"

    def plan(self, layer, rule, where):
        """A checked `KernelPlan` for `rule` (a `spec.FreezeRule`) on a built Dense."""
        self.check_bias(layer.use_bias, rule, where)
        shape = tuple(int(d) for d in layer.kernel.shape)
        plan = self.resolve_plan(rule, where, shape, 0, 1, ("units", "input rows"), layer.use_bias)
        self.check_common(layer, rule, where)
        self.check_constraints(layer, rule, plan, where)
        return plan


KIND = _DenseKind()
