"""The small layers a split model is made of.

A split Dense group is built from ordinary `keras.layers.Dense` pieces plus
these registered layers; none of them is a `Lambda`, so a split model saved
as `.keras` loads with the default `safe_mode=True`:

* `FrozenDense`: a Dense that stays non-trainable, even under
  `model.trainable = True` (which would otherwise unfreeze every sub-layer).
* `SelectFeatures`: picks input rows (features on the last axis).
* `Bias` / `FrozenBias`: a bias vector on its own, for the rare groups where
  no piece shares the bias's trainability.
* `SplitJoin`: joins the pieces in the original unit order and applies the
  activation once. It carries the group's `DensePlan` and the original Dense
  config, so `merge_model` can rebuild the Dense after a save and load.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from splitnet.plan import DensePlan, from_runs, runs

_PACKAGE = "splitnet"

# Above this many slices, restoring the unit order with one gather (whose
# gradient is the inverse gather) is cheaper than slicing and concatenating.
MAX_SLICES = 16


class _AlwaysFrozen:
    """Mixin: `trainable` is always False and setting it is ignored.

    Keras' `Layer.trainable` setter recurses into sub-layers, so a user who
    writes `model.trainable = True` would otherwise unfreeze the frozen pieces.
    """

    @property
    def trainable(self):
        return False

    @trainable.setter
    def trainable(self, value):
        self._trainable = False


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FrozenDense(_AlwaysFrozen, keras.layers.Dense):
    """A `keras.layers.Dense` that is never trainable.

    Example:
        >>> layer = FrozenDense(4)
        >>> layer.trainable = True
        >>> layer.trainable
        False
    """


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Bias(keras.layers.Layer):
    """Adds a bias vector on the last axis: `y = x + b`.

    Args:
        bias_initializer, bias_regularizer, bias_constraint: as in `Dense`.

    Example:
        >>> Bias()(np.zeros((2, 3), "float32")).shape
        (2, 3)
    """

    def __init__(self, bias_initializer="zeros", bias_regularizer=None, bias_constraint=None, **kwargs):
        super().__init__(**kwargs)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.bias_constraint = keras.constraints.get(bias_constraint)

    def build(self, input_shape):
        self.bias = self.add_weight(
            name="bias",
            shape=(input_shape[-1],),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
        )

    def call(self, inputs):
        return ops.add(inputs, self.bias)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FrozenBias(_AlwaysFrozen, Bias):
    """A `Bias` that is never trainable."""


def _slices_or_take(x, segments, index):
    """`x[..., index]`, by slicing and concatenating `segments` when there are few."""
    if len(segments) <= MAX_SLICES:
        parts = [x[..., start:stop] for start, stop in segments]
        return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)
    return ops.take(x, index, axis=-1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SelectFeatures(keras.layers.Layer):
    """Selects features (the last axis) by index: `y = x[..., indices]`.

    Args:
        indices: Sorted feature indices, given as a list of ints or as
            half-open `[start, stop]` runs (what `get_config` writes).

    Example:
        >>> SelectFeatures([0, 2])(np.arange(4.0).reshape(1, 4)).numpy().tolist()
        [[0.0, 2.0]]
    """

    def __init__(self, indices, **kwargs):
        super().__init__(**kwargs)
        if indices and isinstance(indices[0], (list, tuple)):
            indices = from_runs(indices)
        self.indices = tuple(int(i) for i in indices)
        if not self.indices:
            raise ValueError("SelectFeatures needs at least one index. Received: indices=[]")
        self._runs = runs(self.indices)
        self._index = np.asarray(self.indices, dtype="int32")

    def call(self, inputs):
        return _slices_or_take(inputs, self._runs, self._index)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (len(self.indices),)

    def get_config(self):
        return {**super().get_config(), "indices": [list(r) for r in self._runs]}


def _permute(x, perm, inverse):
    """`x[..., perm]` whose gradient is the inverse gather, not a scatter-add."""

    @ops.custom_gradient
    def forward(x):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return ops.take(upstream, inverse, axis=-1)

        return ops.take(x, perm, axis=-1), grad

    return forward(x)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SplitJoin(keras.layers.Layer):
    """Joins the pieces of a split Dense in the original unit order, then activates.

    It takes the trainable-columns block, then the frozen-columns block when
    there is one, and carries the name of the original layer, so outputs and
    `model.get_layer(name)` keep their meaning.

    Args:
        plan: The group's `DensePlan`, or its config.
        dense_config: The original Dense layer's `get_config()`.

    Example:
        >>> plan = DensePlan("d", 2, 3, True, frozen_units=(1,), frozen_rows=(),
        ...                  bias_frozen=False)
        >>> join = SplitJoin(plan, keras.layers.Dense(3, name="d").get_config())
        >>> t, f = np.array([[0.0, 2.0]]), np.array([[1.0]])
        >>> join([t, f]).numpy().tolist()
        [[0.0, 1.0, 2.0]]
    """

    def __init__(self, plan, dense_config, **kwargs):
        kwargs.setdefault("name", dense_config["name"])
        kwargs.setdefault("activity_regularizer", dense_config.get("activity_regularizer"))
        super().__init__(**kwargs)
        self.plan = plan if isinstance(plan, DensePlan) else DensePlan.from_config(plan)
        self.dense_config = dict(dense_config)
        self.activation = keras.activations.get(self.dense_config.get("activation"))
        segments, perm = self.plan.join_order()
        self._segments = segments
        self._perm = np.asarray(perm, dtype="int32")
        self._inverse = np.argsort(self._perm).astype("int32")

    def call(self, inputs):
        blocks = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if self.plan.input_blocks:
            # The first input is the original layer's input, passed only to keep
            # the graph whole (the producer's join) and for merge_model; unused.
            blocks = blocks[1:]
        if len(self._segments) == 1:
            joined = blocks[0]
        elif len(self._segments) <= MAX_SLICES:
            parts = []
            for block, start, stop in self._segments:
                x = blocks[block]
                parts.append(x if (start, stop) == (0, x.shape[-1]) else x[..., start:stop])
            joined = ops.concatenate(parts, axis=-1)
        else:
            joined = _permute(ops.concatenate(blocks, axis=-1), self._perm, self._inverse)
        return self.activation(joined)

    def compute_output_shape(self, input_shape):
        last = input_shape[-1] if isinstance(input_shape, list) else input_shape
        return tuple(last[:-1]) + (self.plan.units,)

    def get_config(self):
        config = super().get_config()
        config.pop("activity_regularizer", None)  # restored from dense_config
        return {**config, "plan": self.plan.get_config(), "dense_config": self.dense_config}
