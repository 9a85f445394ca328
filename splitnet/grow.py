"""Grow a trained model: more output units, input rows and tokens, with the old weights frozen.

`grow_model(model, grow)` returns a split copy of a model in which the named
layers are bigger: new classes (a Dense's units, a Conv's filters), new
input features (rows), new tokens (an Embedding's rows). It goes in four
steps:

1. **Follow the shapes.** Growth is always appended at the end of an axis.
   A layer's new units make its output's last axis longer; the layers that
   read it must follow: splittable layers grow their rows, layers that act
   on each feature alone (activations, dropout, pooling, BatchNormalization)
   pass it on, a last-axis Concatenate passes on its last input's growth.
   Anything else (Flatten, Reshape, LayerNormalization, ...) is refused:
   it would mix old and new features. New rows of a layer fed by a model
   input make that input longer (it keeps its name).
2. **Rebuild.** The sizes change in the model config, Keras rebuilds the
   model (every consumer builds with its new input size), and the weights
   are filled in: old entries where they were; new inputs into old outputs
   zero, so the old outputs do not change; everything else new from `init`.
3. **Check** that every weight grew as predicted (nothing else moved).
4. **Split**: the old entries of every grown layer are frozen, unless the
   rule says `old: trainable` or a `freeze:` rule names the layer.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from splitnet import compat, kinds, saving, split, tree
from splitnet import spec as spec_lib
from splitnet.errors import ModelError

# Layers that act on each feature (last axis) alone, with no weights: growth passes through.
PASS_THROUGH = (
    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Identity", "Rescaling", "ActivityRegularization",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D",
)
ELEMENTWISE = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
MIXING = ("softmax", "log_softmax")  # activations over the feature axis: new features change old outputs


@dataclasses.dataclass(frozen=True)
class Flow:
    """A tensor's last axis grows by `n`, because of `source`; `mixed` says why a
    layer that reads it cannot keep its old outputs (a softmax over the grown axis)."""

    n: int
    source: str
    rule: object  # the `GrowRule` it comes from: errors point at it, and layers that follow share its `old:`
    mixed: str | None = None


@dataclasses.dataclass
class Growth:
    """What one layer grows by, and the rules it grows for (`GrowRule`s, for `old:`)."""

    layer: object
    key: str
    units: int = 0
    rows: int = 0
    rules: list = dataclasses.field(default_factory=list)
    plan: object = None  # the kind's geometry of the old layer (nothing frozen)


class _Graph:
    """The model's graphs (nested models included), and how growth flows through them."""

    def __init__(self, model, where):
        self.model, self.where = model, where
        self.keys = {id(layer): key for key, layer in tree.walk(model)}
        self.producer = {}  # id(tensor) -> node
        self.alias = {}  # id(tensor) -> the tensor it is: a nested model's input or an outer output
        self.nodes = {}  # id(layer) -> its calls in these graphs
        graph = compat.graph_of(model)
        if graph is None:
            raise ModelError(f"model {model.name!r} is subclassed; splitnet grows Functional and Sequential models")
        self.top_inputs = {id(t): i for i, t in enumerate(graph.inputs)}
        self._index(graph)

    def key(self, op):
        return self.keys.get(id(op), op.name)

    def _index(self, graph):
        for node in compat.graph_nodes(graph):
            op = node.operation
            self.nodes.setdefault(id(op), []).append(node)
            for t in node.outputs:
                self.producer[id(t)] = node
            inner = compat.graph_of(op) if isinstance(op, keras.Model) else None
            if inner is not None and not node.is_input:
                for t, outer in zip(inner.inputs, node.input_tensors):
                    self.alias[id(t)] = outer
                for outer, t in zip(node.outputs, inner.outputs):
                    self.alias[id(outer)] = t
                self._index(inner)

    def feeding_input(self, layer, rule):
        """The top model input (its index) whose features reach `layer` unchanged, else a SpecError."""
        tensor = self.nodes[id(layer)][0].input_tensors[0]
        while True:
            if id(tensor) in self.top_inputs:
                return self.top_inputs[id(tensor)]
            if id(tensor) in self.alias:
                tensor = self.alias[id(tensor)]
                continue
            node = self.producer.get(id(tensor))
            op = None if node is None else node.operation
            name = type(op).__name__
            if op is not None and (name in PASS_THROUGH or name in ("BatchNormalization", "InputLayer")):
                if node.is_input:  # a nested model's input not called from outside
                    break
                tensor = node.input_tensors[0]
                continue
            producer = "" if op is None else f" {self.key(op)!r} ({name})"
            hint = f"; grow the units of {self.key(op)!r} instead" if kinds.kind_of(op) else ""
            raise self.where.error(
                rule.path + ("rows",),
                f"layer {rule.layer!r} is fed by{producer}, not by a model input, so its input cannot "
                f"grow alone{hint}",
            )
        raise self.where.error(rule.path + ("rows",), f"layer {rule.layer!r} is not fed by a model input")

    # -- forward ------------------------------------------------------------------------

    def follow(self, growths, input_growth):
        """Propagate growth from the inputs and the grown layers; fills `growths` with the
        layers that must follow, returns `{(id(graph), input index): n}` of every
        (nested) model input that grows."""
        self.growths, self.inputs = growths, {}
        graph = compat.graph_of(self.model)
        flows = [
            Flow(input_growth[i][0], f"model input {t.name!r}", input_growth[i][1]) if i in input_growth else None
            for i, t in enumerate(graph.inputs)
        ]
        self._run(graph, flows)
        return self.inputs

    def _run(self, graph, flows):
        growth = {}
        for i, (t, flow) in enumerate(zip(graph.inputs, flows)):
            if flow is not None:
                growth[id(t)] = flow
                self.inputs[(id(graph), i)] = flow.n
        for node in compat.graph_nodes(graph):
            if node.is_input:
                continue
            ins = [growth.get(id(t)) for t in node.input_tensors]
            for t, flow in zip(node.outputs, self._through(node, ins)):
                if flow is not None:
                    growth[id(t)] = flow
        return [growth.get(id(t)) for t in graph.outputs]

    def _refuse(self, op, flow, why):
        return self.where.error(
            flow.rule.path,
            f"layer {self.key(op)!r} ({type(op).__name__}) cannot follow the {flow.n} new features of "
            f"{flow.source}: {why}",
        )

    def _through(self, node, ins):
        op = node.operation
        name = type(op).__name__
        grown = [f for f in ins if f is not None]
        inner = compat.graph_of(op) if isinstance(op, keras.Model) else None
        if inner is not None:
            return self._run(inner, ins)
        kind = kinds.kind_of(op)
        if kind is not None:
            return [self._kind_node(node, kind, ins)]
        if not grown:
            return [None] * len(node.outputs)
        flow = grown[0]
        if name in PASS_THROUGH:
            activation = getattr(op, "activation", None)
            if name == "Softmax" or getattr(activation, "__name__", None) in MIXING:
                return [dataclasses.replace(flow, mixed=f"{self.key(op)!r} applies a softmax over them, so the old features change")]
            return [flow]
        if name == "BatchNormalization":
            if op.axis not in (-1, len(node.input_tensors[0].shape) - 1):
                raise self._refuse(op, flow, f"it normalizes axis {op.axis}, not the features")
            self._record(op, rows=flow.n, flow=flow, extra=True)
            return [flow]
        if name == "Concatenate":
            rank = len(node.outputs[0].shape)
            if op.axis not in (-1, rank - 1):
                raise self._refuse(op, flow, f"it concatenates axis {op.axis}, not the features")
            if any(f is not None for f in ins[:-1]):
                raise self._refuse(op, flow, "only its last input may grow (new features go at the end)")
            return [flow]
        if name in ELEMENTWISE:
            if len(grown) != len(ins) or len({f.n for f in grown}) != 1:
                raise self._refuse(op, flow, "its other inputs do not grow alike")
            return [flow]
        raise self._refuse(
            op, flow, "splitnet grows through layers that act on each feature alone (activations, dropout, "
            "pooling, BatchNormalization), elementwise merges and a last-axis Concatenate",
        )

    def _kind_node(self, node, kind, ins):
        op = node.operation
        growth = self.growths.get(id(op))
        rows_axis, units_axis = kind.grow_flow(op, growth.plan) if growth else (None, None)
        flow = ins[0] if ins else None
        if compat.node_kwargs(node).get("reverse"):  # a ReversibleEmbedding's logits: dimensions in, tokens out
            units = growth.units if growth else 0
            if (flow.n if flow else 0) != units:
                raise self.where.error(
                    flow.rule.path if flow else growth.rules[0].path,
                    f"layer {self.key(op)!r}: its logits read {flow.n if flow else 0} new features "
                    f"but its dimensions grow by {units}",
                )
            return Flow(growth.rows, repr(growth.key), growth.rules[0]) if growth and growth.rows else None
        if flow is not None:
            if flow.mixed:
                raise self._refuse(op, flow, flow.mixed)
            if growth is None:
                growth = self._record(op)
                rows_axis, units_axis = kind.grow_flow(op, growth.plan)
            if rows_axis != -1:
                why = "it reads token ids" if rows_axis is None else f"its rows are axis {rows_axis} of its input"
                raise self._refuse(op, flow, why)
            self._record(op, rows=flow.n, flow=flow)
        if growth is None or not growth.units:
            return None
        out = Flow(growth.units, repr(growth.key), growth.rules[0])
        if units_axis != -1:
            why = f"they are axis {units_axis} of the output of {growth.key!r}, not its features (the last axis)"
            return dataclasses.replace(out, mixed=why)
        if getattr(getattr(op, "activation", None), "__name__", None) in MIXING:
            return dataclasses.replace(out, mixed=f"{growth.key!r} applies a softmax over its units, so its old features change")
        return out

    def _record(self, op, rows=0, flow=None, extra=False):
        """Note that `op` grows by `rows` rows (from the flow), checking a shared layer grows alike."""
        key = self.key(op)
        growth = self.growths.get(id(op))
        if growth is None:
            growth = self.growths[id(op)] = Growth(op, key)
            if not extra:
                growth.plan = geometry(op, key, None, self.where)
        if rows:
            if growth.rows and growth.rows != rows:
                raise self.where.error(flow.rule.path, f"layer {key!r} is called twice, on inputs that grow differently")
            growth.rows = rows
        if flow is not None and flow.rule not in growth.rules:
            growth.rules.append(flow.rule)
        return growth


def geometry(layer, key, rule, where):
    """The kind's plan of `layer` with nothing frozen: where its rows and units are."""
    path = ("grow", key) if rule is None else rule.path
    empty = spec_lib.FreezeRule(layer=key, units=None, rows=None, bias=False, path=path)
    return kinds.kind_of(layer).plan(layer, empty, where)


# ------------------------------------------------------------------------------------


def grow_model(model, grow, freeze=None):
    """Return a split copy of `model` whose named layers have more units and/or input rows.

    The new entries train; the old ones are frozen (unless a rule says
    `old: trainable`, or `freeze` names the layer); on the old inputs, the
    grown model's old outputs are bit-identical to `model`'s.

    Args:
        model: A built Functional or Sequential model (nested ones too); not changed.
        grow: A mapping like the spec's `grow` section: layer name (path) ->
            `units` (how many outputs to add: classes, hidden units, filters,
            an embedding's dimensions), `rows` (inputs to add: features; an
            embedding's tokens), `init` (`layer`, `zeros` or `mean`: how new
            outputs start), `old` (`frozen` or `trainable`).
        freeze: Optional `freeze` rules on the grown model (its new sizes);
            a rule for a grown layer replaces its default.

    Returns:
        The grown split model, compiled as `model` was (fresh optimizer).

    Raises:
        SpecError: a rule that does not fit the model (a layer that cannot
            follow, a bad count), with the key path in front.

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="classes")(inputs))
        >>> grown = splitnet.grow_model(model, {"classes": {"units": 2}})
        >>> grown.output.shape, [tuple(w.shape) for w in grown.trainable_weights]
        ((None, 5), [(4, 2), (2,)])
    """
    where = spec_lib.Where()
    return grown(model, spec_lib.parse_grow(grow, where), spec_lib.parse_freeze(freeze, where), where)


def grown(model, rules, freeze, where):
    """`grow_model` on parsed rules (`spec.GrowRule`, `spec.FreezeRule`); errors located by `where`."""
    graph = _Graph(model, where)
    growths, input_growth = {}, {}
    for rule in rules:
        _start(model, graph, rule, where, growths, input_growth)
    inputs = graph.follow(growths, input_growth)
    copy = _rebuild(model, growths, inputs, where)
    targets = split.plan_layers(copy, _freeze_rules(growths, freeze, where), where)
    old = {growth.key: growth.plan for growth in growths.values() if growth.plan is not None}
    for layer, key, plan, kind, _ in targets.values():
        if key in old:
            plan = dataclasses.replace(plan, grown_from=(old[key].in_dim, old[key].units))
        kind.install(layer, plan, key)
    kinds.after_split(copy)
    saving.recompile(copy, model)
    if getattr(copy, "optimizer", None) is not None:
        copy.optimizer.build(copy.trainable_variables)
    return copy


def _start(model, graph, rule, where, growths, input_growth):
    """Check one rule; note its layer's growth, and the model input its new rows come from."""
    layer = split.layer_at(model, rule, where, split.splittable_keys)
    kind = kinds.kind_of(layer)
    if kinds.split_kind_of(layer):
        raise where.error(rule.path, f"layer {rule.layer!r} is split; merge the model before growing it", key=True)
    if kind is None:
        raise where.error(
            rule.path, f"layer {rule.layer!r} is of type {type(layer).__name__}; splitnet grows "
            f"{kinds.supported_names()} layers", key=True,
        )
    if id(layer) not in graph.nodes:
        raise where.error(
            rule.path, f"layer {rule.layer!r} is made by its parent's code, so its size comes from the "
            "parent's arguments; splitnet grows the layers of Functional and Sequential graphs", key=True,
        )
    if id(layer) in growths:
        raise where.error(rule.path, f"layer {rule.layer!r} is named twice", key=True)
    growth = growths[id(layer)] = Growth(layer, rule.layer, rule.units, rules=[rule], plan=geometry(layer, rule.layer, rule, where))
    rows_axis, _ = kind.grow_flow(layer, growth.plan)
    if not rule.rows:
        return
    if rows_axis is None:
        growth.rows = rule.rows  # an embedding's tokens: in its config, not its input
        return
    if rows_axis != -1:
        raise where.error(rule.path + ("rows",), f"layer {rule.layer!r}: its rows are axis {rows_axis} of its input, not the last")
    index = graph.feeding_input(layer, rule)
    if index in input_growth:
        raise where.error(
            rule.path + ("rows",), f"the input that feeds {rule.layer!r} grows already for "
            f"{input_growth[index][1].layer!r}; every layer reading it grows with it",
        )
    input_growth[index] = (rule.rows, rule)  # the layer's rows follow from its input


def _rebuild(model, growths, inputs, where):
    """The grown plain model: sizes changed in the config, weights filled in."""
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    graphs = {id(compat.graph_of(m)): key for key, m in [("", model)] + list(tree.walk(model))
              if isinstance(m, keras.Model) and compat.graph_of(m) is not None}
    for (graph_id, index), n in inputs.items():
        entry = _entry(config, graphs[graph_id])
        layer_config = _input_entry(entry, index, graphs[graph_id] or model.name)["config"]
        layer_config["batch_shape"] = list(layer_config["batch_shape"][:-1]) + [layer_config["batch_shape"][-1] + n]
    for growth in growths.values():
        kind = kinds.kind_of(growth.layer)
        tokens = kind is not None and kind.grow_flow(growth.layer, growth.plan)[0] is None
        if kind is None or not (growth.units or (growth.rows and tokens)):
            continue  # rows from the input: the rebuilt graph gives them
        parent_key, _, name = growth.key.rpartition("/")
        parent = _entry(config, parent_key)
        entry = _child(parent, name)
        if entry is not None:
            entry["config"] = kind.grow_config(growth.layer, growth.plan, entry["config"], growth.units, growth.rows)
        elif not _grow_argument(parent, growth, tokens):
            raise where.error(
                growth.rules[0].path,
                f"layer {growth.key!r} is made by the code of {parent.get('class_name')} {parent_key!r}, which "
                "sets its size from its own arguments; splitnet grows layers listed in a Functional or "
                "Sequential model's config, and a keras-hub backbone's token embedding",
            )
    _forget_built_shapes(config)
    copy = saving.rebuild(model, config)
    _fill(model, copy, growths)
    return copy


def _grow_argument(parent, growth, tokens):
    """Grow a layer that its parent builds from its config: a keras-hub backbone's
    `vocabulary_size` sets its token embedding's tokens (and a tied head's logits)."""
    config = parent.get("config", {})
    if tokens and not growth.units and config.get("vocabulary_size") == growth.plan.in_dim:
        config["vocabulary_size"] += growth.rows
        return True
    return False


def _forget_built_shapes(entry):
    """Drop the input shapes the layers of graphs were built with: a graph builds each layer
    when it calls it, with its new input shape, but a `build_config` would build it first."""
    if "layers" in entry.get("config", {}):
        entry.pop("build_config", None)  # a Sequential builds from its InputLayer
    for layer in entry.get("config", {}).get("layers", []):
        layer.pop("build_config", None)
        _forget_built_shapes(layer)


def _entry(config, key):
    """The serialized (nested) model or layer at `key` ("" for the top)."""
    entry = config
    for part in [p for p in key.split("/") if p]:
        entry = _child(entry, part)
        if entry is None:
            raise ModelError(f"{key!r} is not in the model's config")
    return entry


def _child(entry, name):
    """The serialized layer `name` that `entry` lists in its config (`layers`, or an
    argument such as a keras-hub task's `backbone`), or None."""
    config = entry.get("config", {})
    candidates = list(config.get("layers", [])) + [v for v in config.values() if isinstance(v, dict)]
    for child in candidates:
        if isinstance(child.get("config"), dict) and child["config"].get("name") == name:
            return child
    return None


def _input_entry(model_entry, index, name):
    layers = model_entry["config"]["layers"]
    if "input_layers" in model_entry["config"]:
        wanted = model_entry["config"]["input_layers"]
        wanted = wanted[index] if isinstance(wanted[0], list) else wanted
        return next(e for e in layers if e["config"]["name"] == wanted[0])
    if layers and layers[0]["class_name"] == "InputLayer":
        return layers[0]
    raise ModelError(f"model {name!r} has no Input layer in its config; build it with keras.Input to grow its input")


def _fill(model, copy, growths):
    """Give `copy` (the rebuilt, bigger model) the old weights, grown as `growths` say."""
    originals, twins = list(tree.walk(model)), list(tree.walk(copy))
    if [type(a).__name__ for _, a in originals] != [type(b).__name__ for _, b in twins]:
        raise ModelError(f"model {model.name!r} does not come back from its config with the same layers")
    for (key, a), (_, b) in zip(originals, twins):
        b.name = a.name
        growth = growths.get(id(a))
        kind = kinds.kind_of(a)
        if kind is not None:
            old, fresh = kind.merged_weights(a), kind.merged_weights(b)
            plan = growth.plan if growth is not None and growth.plan is not None else None
            if growth is None:
                values = old
            else:
                counts = {"rows": growth.rows, "units": growth.units}
                init = next((r.init for r in growth.rules if r.layer == key), "layer")
                roles = kind.grow_roles(a, plan)
                values = [grow_array(o, f, r, counts, init) for o, f, r in zip(old, fresh, roles)]
            _assign(key, b, values, [np.shape(f) for f in fresh])
            continue
        old = [np.asarray(w) for w in tree.own_weights(a)]
        fresh = [np.asarray(w) for w in tree.own_weights(b)]
        if growth is not None:  # BatchNormalization: new features get fresh statistics
            values = [_place(o, f) for o, f in zip(old, fresh)]
        else:
            values = old
        for variable, value in zip(tree.own_weights(b), values):
            if tuple(variable.shape) != value.shape:
                raise ModelError(f"layer {key!r} changed shape unexpectedly when the model grew ({value.shape} -> {tuple(variable.shape)})")
            variable.assign(value)


def _assign(key, layer, values, shapes):
    if [v.shape for v in values] != [tuple(s) for s in shapes]:
        raise ModelError(
            f"layer {key!r} changed shape unexpectedly when the model grew: expected "
            f"{[v.shape for v in values]}, Keras built {[tuple(s) for s in shapes]}"
        )
    layer.set_weights(values)


def _place(old, fresh):
    """`fresh` with `old` in its leading block."""
    out = np.array(fresh)
    out[tuple(slice(0, s) for s in old.shape)] = old
    return out


def grow_array(old, fresh, roles, counts, init):
    """One weight, grown: old entries kept; new inputs into old outputs zero; the rest per `init`.

    Args:
        old: The weight before growing.
        fresh: The same weight of the rebuilt layer (its initializers' values).
        roles: `{axis: (count, role)}` from the kind's `grow_roles`.
        counts: `{"rows": n, "units": n}`.
        init: "layer" (`fresh`), "zeros", or "mean" (the mean of the old outputs along the "mean" axis).

    Example:
        >>> grow_array(np.ones((2, 2)), np.full((3, 3), 7.0), {0: ("rows", "in"), 1: ("units", "mean")},
        ...            {"rows": 1, "units": 1}, "layer").tolist()
        [[1.0, 1.0, 7.0], [1.0, 1.0, 7.0], [0.0, 0.0, 7.0]]
    """
    expected = tuple(s + (counts[roles[a][0]] if a in roles else 0) for a, s in enumerate(old.shape))
    if expected != fresh.shape:
        return np.zeros(expected, old.dtype)  # `_assign` reports the difference
    out = np.zeros_like(fresh) if init == "zeros" else np.array(fresh)
    out[tuple(slice(0, s) for s in old.shape)] = old
    outs = [a for a, (_, role) in roles.items() if role != "in"]
    for axis, (_, role) in roles.items():
        if role == "in":
            index = [slice(None)] * out.ndim
            index[axis] = slice(old.shape[axis], None)
            for o in outs:
                index[o] = slice(0, old.shape[o])
            out[tuple(index)] = 0
    if init == "mean":
        for axis, (_, role) in roles.items():
            if role == "mean" and out.shape[axis] > old.shape[axis]:
                index = [slice(None)] * out.ndim
                index[axis] = slice(0, old.shape[axis])
                mean = out[tuple(index)].mean(axis=axis, keepdims=True, dtype=np.float64)
                index[axis] = slice(old.shape[axis], None)
                out[tuple(index)] = mean.astype(out.dtype)
    return out


def _freeze_rules(growths, freeze, where):
    """The default rules (old entries of grown layers frozen) plus the user's, which win."""
    named = {rule.layer for rule in freeze}
    defaults = {}
    for growth in growths.values():
        if growth.plan is None or growth.key in named:
            continue
        if growth.rules and not any(r.freeze_old for r in growth.rules):
            continue
        plan = growth.plan
        kind = kinds.kind_of(growth.layer)
        tokens = kind.grow_flow(growth.layer, plan)[0] is None
        if growth.units and not (tokens and growth.rows):
            entry = {"units": f":{plan.units}"}
            if plan.use_bias and plan.bias_axis is None:
                entry["bias"] = True  # a bias shared by all units is old
        else:
            entry = {"rows": f":{plan.in_dim}"}
            if plan.use_bias:
                entry["bias"] = True
        defaults[growth.key] = entry
    return spec_lib.parse_freeze(defaults, where, path=("grow",)) + tuple(freeze)


__all__ = ["grow_model"]
