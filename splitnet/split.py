"""Split Dense layers into trainable and frozen pieces: `build_model`, `split_model`.

The rewrite is Keras' own `clone_model`: every layer is copied with its
weights, except the Dense layers named in `freeze`, whose calls are replaced
(through `call_function`) by the pieces of their `DensePlan`. A Dense called
at several places is split once and its pieces are reused at every call, so
shared weights stay shared.
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np

from splitnet import spec as spec_lib
from splitnet.errors import ModelError, SpecError
from splitnet.files import ModelFileError, load_keras
from splitnet.graph import as_functional, find_groups, group_member_keys, is_rewritable, rewrite, walk_layers
from splitnet.layers import Bias, FrozenBias, FrozenDense, SelectFeatures, SplitJoin
from splitnet.plan import DensePlan, resolve

# Regularizers that add up over pieces (so splitting leaves their gradient
# unchanged), and constraints that act per column (so a column split leaves
# them unchanged).
_ADDITIVE_REGULARIZERS = (keras.regularizers.L1, keras.regularizers.L2, keras.regularizers.L1L2)
_PER_COLUMN_CONSTRAINTS = (keras.constraints.MaxNorm, keras.constraints.UnitNorm, keras.constraints.MinMaxNorm)


def frozen_masks(model):
    """Where each Dense layer of a model is frozen, in the original layer's coordinates.

    Args:
        model: A model made by `build_model` or `split_model` (or any model).

    Returns:
        `{layer_key: {"kernel": bool array (in_dim, units), "bias": bool array
        (units,)}}` with True where the entry is frozen, for every Dense that
        has frozen entries: split groups, layers frozen whole, and plain Dense
        layers that are not trainable. Layers inside a nested model are keyed
        `outer/inner`. "bias" has shape (0,) for a layer without bias.

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
        >>> masks = splitnet.frozen_masks(splitnet.split_model(model, {"d": {"units": [0]}}))
        >>> masks["d"]["kernel"][:, 0].all(), masks["d"]["bias"].tolist()
        (True, [True, False, False])
    """
    out = {}
    members = group_member_keys(model)
    trainable_keys = {key for key, _, _, trainable in walk_layers(model) if trainable}
    for key, join, layers in find_groups(model):
        # The plan's frozen entries, plus whatever a trainable piece holds if
        # that piece is not trainable now (frozen by hand, or its model is).
        plan, prefix = join.plan, key[: len(key) - len(join.name)]
        kernel, bias = plan.kernel_mask(), plan.bias_mask()
        for role, layer in layers.items():
            if layer.weights and prefix + layer.name not in trainable_keys:
                held_kernel, held_bias = plan.role_masks(role)
                kernel |= held_kernel
                bias |= held_bias
        out[key] = {"kernel": kernel, "bias": bias}
    for key, layer, _, trainable in walk_layers(model):
        if isinstance(layer, keras.layers.Dense) and not trainable and key not in members:
            out[key] = {
                "kernel": np.ones(layer.kernel.shape, dtype=bool),
                "bias": np.ones((layer.units if layer.use_bias else 0,), dtype=bool),
            }
    return out


# --------------------------------------------------------------------------
# Planning: from freeze rules and a model to one DensePlan per target layer.


def _check_dense(layer, rule, plan, where):
    path = rule.path
    config = layer.get_config()
    if config.get("lora_rank"):
        raise where.error(path, f"layer {rule.layer!r} has LoRA enabled; merge it first")
    if config.get("quantization_config") or getattr(layer, "quantization_mode", None):
        raise where.error(path, f"layer {rule.layer!r} is quantized; splitnet splits float Dense layers")
    for kind in ("kernel", "bias"):
        reg = getattr(layer, f"{kind}_regularizer")
        if reg is not None and not isinstance(reg, _ADDITIVE_REGULARIZERS):
            raise where.error(
                path,
                f"layer {rule.layer!r} has a {type(reg).__name__} {kind}_regularizer; only L1/L2 "
                "regularizers keep their meaning when the weights are split",
            )
    constraint = layer.kernel_constraint
    elementwise = isinstance(constraint, keras.constraints.NonNeg)
    if constraint is not None and not elementwise and not plan.fully_frozen:
        if plan.frozen_rows:
            raise where.error(
                path + ("rows",),
                f"layer {rule.layer!r} has a kernel_constraint ({type(constraint).__name__}); it would "
                "apply to each row piece separately and change its meaning",
            )
        per_column = isinstance(constraint, _PER_COLUMN_CONSTRAINTS) and constraint.axis in (0, -2)
        if plan.frozen_units and not per_column:
            raise where.error(
                path + ("units",),
                f"layer {rule.layer!r} has a kernel_constraint ({type(constraint).__name__}) that is "
                "not per unit; it would change meaning when the units are split",
            )
    bias_constraint = layer.bias_constraint
    if bias_constraint is not None and not plan.fully_frozen and plan.frozen_units:
        if not isinstance(bias_constraint, keras.constraints.NonNeg):
            raise where.error(
                path + ("units",),
                f"layer {rule.layer!r} has a bias_constraint ({type(bias_constraint).__name__}) that "
                "would change meaning when the bias is split",
            )


def _lookup(model, name, where, path, dense_keys):
    container, layer = model, None
    parts = name.split("/")
    for depth, part in enumerate(parts):
        try:
            layer = container.get_layer(part)
        except ValueError:
            layer = None
        if layer is None or (depth < len(parts) - 1 and not isinstance(layer, keras.Model)):
            hint = spec_lib.suggest(name, dense_keys)
            raise where.error(path, f"no layer {name!r} in model {model.name!r}{hint}", key=True)
        if depth < len(parts) - 1 and not is_rewritable(layer):
            raise where.error(
                path,
                f"layer {name!r} is inside {part!r}, a subclassed {type(layer).__name__} whose graph "
                "splitnet cannot rewrite",
                key=True,
            )
        container = layer
    return layer


def plan_layers(model, rules, where):
    """Resolve freeze rules against a model: `{id(layer): (layer, key, DensePlan)}`."""
    keys = {key: (layer, trainable) for key, layer, _, trainable in walk_layers(model)}
    dense_keys = [k for k, (layer, _) in keys.items() if isinstance(layer, keras.layers.Dense)]
    existing = set(keys)
    members = group_member_keys(model)
    targets = {}
    for rule in rules:
        layer = _lookup(model, rule.layer, where, rule.path, dense_keys)
        if rule.layer in members:
            raise where.error(rule.path, f"layer {rule.layer!r} is a piece of a split layer; merge the model first", key=True)
        if isinstance(layer, (SplitJoin, FrozenDense)):
            raise where.error(rule.path, f"layer {rule.layer!r} is already split or frozen; merge the model first", key=True)
        if type(layer) is not keras.layers.Dense:
            raise where.error(
                rule.path,
                f"layer {rule.layer!r} is of type {type(layer).__name__}; only Dense layers can be split",
                key=True,
            )
        if not keys[rule.layer][1]:
            raise where.error(
                rule.path,
                f"layer {rule.layer!r} is not trainable in this model, so it is frozen whole already",
                key=True,
            )
        if id(layer) in targets:
            raise where.error(rule.path, f"layer {rule.layer!r} is named twice", key=True)
        if not layer.built:
            raise ModelError(f"layer {rule.layer!r} is not built; call the model on an input first")
        if rule.bias and not layer.use_bias:
            raise where.error(rule.path + ("bias",), f"layer {rule.layer!r} has no bias (use_bias=False)")
        in_dim, units = layer.kernel.shape
        units_set = () if rule.units is None else resolve(rule.units, units, "units", rule.layer, where)
        rows_set = () if rule.rows is None else resolve(rule.rows, in_dim, "input rows", rule.layer, where)
        plan = DensePlan(
            name=layer.name,
            in_dim=int(in_dim),
            units=int(units),
            use_bias=layer.use_bias,
            frozen_units=units_set,
            frozen_rows=rows_set,
            bias_frozen=rule.bias and layer.use_bias,
        )
        _check_dense(layer, rule, plan, where)
        prefix = rule.layer[: len(rule.layer) - len(layer.name)]
        for role in plan.layer_roles():
            generated = prefix + plan.layer_name(role)
            if generated in existing:
                raise where.error(rule.path, f"cannot split {rule.layer!r}: the model already has a layer named {generated!r}", key=True)
        targets[id(layer)] = (layer, rule.layer, plan, None)
    for key, (layer, name, plan, _) in list(targets.items()):
        producer = _partition_producer(layer, plan, targets)
        if producer is not None:
            blocks = (targets[id(producer)][2].trainable_units, targets[id(producer)][2].frozen_units)
            targets[key] = (layer, name, dataclasses.replace(plan, input_blocks=blocks), producer)
    return targets


# Activations that act entry by entry, so they can be applied to each block.
_ELEMENTWISE = {
    "linear", "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "tanh", "sigmoid", "hard_sigmoid",
    "silu", "swish", "softplus", "softsign", "exponential", "mish", "hard_silu", "hard_swish",
}


def _partition_producer(layer, plan, targets):
    """The split Dense whose frozen units feed `layer` and nothing trainable, or None.

    Then `layer` can read that producer's blocks and split its kernel rows
    along them, so the input gradient towards the frozen block is never
    computed (nothing needs it). Only the simple, common case: both layers
    called once, `layer` reading the producer's output directly.
    """
    if plan.frozen_rows or plan.fully_frozen or len(layer._inbound_nodes) != 1:
        return None
    inputs = layer._inbound_nodes[0].input_tensors
    if len(inputs) != 1:
        return None
    producer = inputs[0]._keras_history.operation
    if id(producer) not in targets or len(producer._inbound_nodes) != 1:
        return None
    producer_plan = targets[id(producer)][2]
    if producer_plan.fully_frozen or not producer_plan.frozen_units or producer_plan.frozen_rows:
        return None
    if producer.get_config()["activation"] not in _ELEMENTWISE:
        return None
    if _needs_gradient(producer._inbound_nodes[0].input_tensors):
        return None
    return producer


def _needs_gradient(tensors):
    """Whether any of `tensors` depends on a trainable weight."""
    stack, seen = list(tensors), set()
    while stack:
        tensor = stack.pop()
        operation, node_index, _ = tensor._keras_history
        if operation is None or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        node = operation._inbound_nodes[node_index]
        if node.is_input:
            continue
        if operation.trainable_weights:
            return True
        stack.extend(node.input_tensors)
    return False


# --------------------------------------------------------------------------
# Building the pieces.


class _Group:
    """The layers that replace one Dense; created once, callable at every call site."""

    def __init__(self, layer, plan, producer_activation=None):
        self.plan = plan
        config = layer.get_config()
        self.layers = {}
        self.blocks = None  # the joined blocks of the last call, for a consumer's input_blocks
        if plan.fully_frozen:
            self.whole = FrozenDense.from_config({**config, "trainable": False})
            return
        self.whole = None
        base = {k: v for k, v in config.items() if k not in ("name", "units", "activation", "use_bias", "trainable")}
        base.pop("activity_regularizer", None)
        # The original initializers may depend on the full shape (Constant of an
        # array), and the pieces get the original weights right after anyway.
        base.update(kernel_initializer="zeros", bias_initializer="zeros")
        for piece in plan.pieces:
            cls = FrozenDense if piece.frozen else keras.layers.Dense
            self.layers[piece.role] = cls.from_config(
                {
                    **base,
                    "name": plan.layer_name(piece.role),
                    "units": len(piece.cols),
                    "activation": None,
                    "use_bias": piece.use_bias,
                    "trainable": not piece.frozen,
                }
            )
            if piece.rows is not None and piece.source is None:
                self.layers[piece.role + "_in"] = SelectFeatures(
                    piece.rows, name=plan.layer_name(piece.role + "_in"), dtype=config["dtype"]
                )
        for i in range(len(plan.input_blocks)):
            # The producer's activation, applied to each of its blocks: what
            # its join would compute, minus the reordering.
            self.layers[f"input{i}"] = keras.layers.Activation(
                producer_activation, name=plan.layer_name(f"input{i}"), dtype=config["dtype"]
            )
        if plan.bias_layer:
            cls = FrozenBias if plan.bias_layer == "frozen" else Bias
            self.layers["bias"] = cls(
                bias_initializer="zeros",
                bias_regularizer=config["bias_regularizer"],
                bias_constraint=config["bias_constraint"],
                name=plan.layer_name("bias"),
                dtype=config["dtype"],
            )
        for role in ("sum", "sum_frozen"):
            if role in plan.layer_roles():
                self.layers[role] = keras.layers.Add(name=plan.layer_name(role), dtype=config["dtype"])
        self.layers["join"] = SplitJoin(plan, config, dtype=config["dtype"])

    def __call__(self, x, producer_blocks=None):
        if self.whole is not None:
            return self.whole(x)
        inputs = {i: self.layers[f"input{i}"](block) for i, block in enumerate(producer_blocks or ())}
        sums = {0: [], 1: []}
        for piece in self.plan.pieces:
            if piece.source is not None:
                source = inputs[piece.source]
            else:
                source = x if piece.rows is None else self.layers[piece.role + "_in"](x)
            sums[piece.block].append(self.layers[piece.role](source))
        blocks = []
        for block, role in ((0, "sum"), (1, "sum_frozen")):
            if sums[block]:
                blocks.append(self.layers[role](sums[block]) if len(sums[block]) > 1 else sums[block][0])
        if "bias" in self.layers:
            blocks[0] = self.layers["bias"](blocks[0])
        self.blocks = blocks
        return self.layers["join"](([x] if self.plan.input_blocks else []) + blocks)

    def set_weights_from(self, layer):
        weights = layer.get_weights()
        if self.whole is not None:
            self.whole.set_weights(weights)
            return
        kernel, *bias = weights
        for role, values in self.plan.split_weights(kernel, bias[0] if bias else None).items():
            self.layers[role].set_weights(values)


def _rewrite(model, targets):
    """Clone `model` with weights, each target Dense replaced by its group at every call."""
    groups = {}
    blocks_of = {}  # id(a group's output) -> its joined blocks, for consumers with input_blocks

    def replacement(layer):
        if id(layer) not in targets:
            return None
        _, _, plan, producer = targets[id(layer)]
        activation = producer.get_config()["activation"] if producer is not None else None
        group = groups[id(layer)] = _Group(layer, plan, activation)

        def call(inputs, *args, **kwargs):
            outputs = group(inputs, blocks_of.get(id(inputs)) if plan.input_blocks else None)
            if group.blocks is not None:
                blocks_of[id(outputs)] = group.blocks
            return outputs

        return call

    new_model = rewrite(model, replacement)
    for key, group in groups.items():
        group.set_weights_from(targets[key][0])
    return new_model


def split_model(model, freeze):
    """Return a copy of `model` whose named Dense layers are split into frozen and trainable pieces.

    Args:
        model: A built Functional or Sequential Keras model. It is not changed.
        freeze: A mapping like the spec's `freeze` section, e.g.
            `{"head": {"units": "0:10"}, "hidden": {"rows": [0, 1]}}`.

    Returns:
        A new Functional model that computes the same function on the same
        weights, in which the frozen entries are non-trainable.

    Raises:
        SpecError: `freeze` is invalid for this model (message starts with
            the key path, e.g. `freeze.head.units[0]:`).
        ModelError: the model cannot be rewritten (e.g. it is subclassed).

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(4, name="head")(inputs))
        >>> split = splitnet.split_model(model, {"head": {"units": [0, 1]}})
        >>> [w.shape for w in split.trainable_weights]
        [(8, 2), (2,)]
    """
    where = spec_lib.Where()
    rules = spec_lib.parse_freeze(freeze, where)
    return _split(model, rules, where)


def _split(model, rules, where):
    as_functional(model)  # refuse a subclassed model before anything else
    targets = plan_layers(model, rules, where)
    return _rewrite(model, targets)


def _auto_names(layer_specs):
    """Deterministic names for unnamed layers: `dense`, `dense_1`, ... per class."""
    counts, names = {}, []
    for layer in layer_specs:
        if "name" in layer.args:
            names.append(layer.args["name"])
            continue
        base = re.sub(r"(?<!^)(?=[A-Z])", "_", layer.type).lower()
        n = counts.get(base, 0)
        counts[base] = n + 1
        names.append(base if n == 0 else f"{base}_{n}")
    return names


def _build_stack(model_spec):
    inputs = keras.Input(shape=model_spec.input_shape, name="input")
    x = inputs
    for layer, name in zip(model_spec.layers, _auto_names(model_spec.layers)):
        x = getattr(keras.layers, layer.type)(**{**layer.args, "name": name})(x)
    return keras.Model(inputs, x, name=model_spec.name)


def load_base(path, where):
    """Load a spec's `base` model safely (`safe_mode=True`); errors point at `base:`."""
    try:
        return load_keras(path, compile=False)
    except ModelFileError as exc:
        raise where.error(("base",), str(exc)) from None


def build_model(spec):
    """Build the split model a spec describes.

    Args:
        spec: A `Spec`, a path to a YAML spec, or a mapping.

    Returns:
        The split `keras.Model` (not compiled). With `base`, the saved model's
        weights are kept; with `model`, the stack is freshly initialized.

    Raises:
        SpecError: the spec is invalid or does not fit the model.

    Example:
        >>> import splitnet
        >>> model = splitnet.build_model({
        ...     "model": {"input_shape": [8], "layers": [
        ...         {"type": "Dense", "name": "head", "units": 4, "activation": "softmax"}]},
        ...     "freeze": {"head": {"units": "0:2"}}})
        >>> model.get_layer("head").__class__.__name__
        'SplitJoin'
    """
    spec = spec_lib.load_spec(spec)
    if spec.model is not None:
        try:
            model = _build_stack(spec.model)
        except Exception as exc:  # noqa: BLE001 - shape mismatches between layers
            raise spec.where.error(("model", "layers"), f"cannot build the model: {spec_lib.first_line(exc)}") from None
    else:
        model = load_base(spec.base, spec.where)
    return _split(model, spec.freeze, spec.where)


__all__ = ["build_model", "split_model", "frozen_masks", "ModelError", "SpecError"]
