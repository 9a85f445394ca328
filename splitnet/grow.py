"""Grow a trained model: more output units, input rows and tokens, with the old weights frozen.

`grow_model(model, grow)` returns a split copy of a model in which the named
layers are bigger: new classes (a Dense's units, a Conv's filters), new
input features (rows), new tokens (an Embedding's rows). It goes in four
steps:

1. **Follow the shapes** (`_Graph`). Growth is always appended at the end
   of an axis. A layer's new units make its output's last axis longer; the
   layers that read it must follow: splittable layers grow their rows;
   layers that act on each feature alone (activations, dropout, pooling,
   BatchNormalization), elementwise merges of inputs that grow alike and a
   last-axis Concatenate whose last input grows pass it on. Anything else
   (Flatten, Reshape, LayerNormalization, ...) is refused: it would mix old
   and new features. New rows of a layer fed by a model input make that
   input longer (it keeps its name).
2. **Rebuild** (`_rebuild`). The sizes change in the model config, and
   Keras rebuilds the model: every layer that follows builds with its new
   input size.
3. **Fill in the weights** (`_fill`, `grow_array`): old entries where they
   were; new inputs into old outputs zero, so the old outputs do not
   change; everything else new from `init`. Each weight's new shape is
   checked against the one predicted in step 1.
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
MIXING = ("softmax", "log_softmax", "sparsemax")  # over the feature axis: new features change old outputs
CANNOT_FOLLOW = (
    "splitnet grows through layers that act on each feature alone (activations, dropout, pooling, "
    "BatchNormalization), elementwise merges and a last-axis Concatenate"
)


@dataclasses.dataclass(frozen=True)
class Flow:
    """A tensor's last axis grows by `n`, because of `source`.

    `mixed` says why no layer may read it (a softmax over the grown axis; new
    units on another axis): only a model output may.
    """

    n: int
    source: str
    rule: object  # the `GrowRule` it comes from: errors point at it, and layers that follow share its `old:`
    mixed: str | None = None


@dataclasses.dataclass
class Growth:
    """What one layer of a splittable kind grows by, and why.

    `rules` are the `GrowRule`s it grows for: its own when `named`, else
    those of the layers it follows (for `old:` and for error locations).
    `plan` is the kind's geometry of the old layer (nothing frozen); None
    for a BatchNormalization that follows.
    """

    layer: object
    key: str
    units: int = 0
    rows: int = 0
    rules: list = dataclasses.field(default_factory=list)
    plan: object = None
    named: bool = False

    @property
    def kind(self):
        return kinds.kind_of(self.layer)

    @property
    def tokens(self):
        """Whether its rows are an embedding's tokens (set in its config, not by its input)."""
        return self.plan is not None and self.kind.grow_flow(self.layer, self.plan)[0] is None


def geometry(layer, key, path, where):
    """The kind's plan of `layer` with nothing frozen: where its rows and units are."""
    empty = spec_lib.FreezeRule(layer=key, units=None, rows=None, bias=False, path=path)
    return kinds.kind_of(layer).plan(layer, empty, where)


class _Graph:
    """The model's graphs (nested models included), and how growth flows through them.

    Args:
        model: A Functional or Sequential model.
        where: `spec.Where`, for errors.
        growths: `{id(layer): Growth}`, the named layers' growth; `follow`
            adds the layers that must follow.
    """

    def __init__(self, model, where, growths):
        self.model, self.where, self.growths = model, where, growths
        self.keys = {id(layer): key for key, layer in tree.walk(model)}
        self.producer = {}  # id(tensor) -> the node that makes it
        self.alias = {}  # id(tensor) -> the tensor it is: a nested model's input or an outer output
        self.nodes = {}  # id(layer) -> its calls in these graphs
        self.inputs = {}  # (id(graph), input index) -> how much that input grows
        self.calls = {}  # id(layer or nested model) -> (the growth its first call read, that call's rule)
        graph = compat.graph_of(model)
        if graph is None:
            raise ModelError(f"model {model.name!r} is subclassed; splitnet grows Functional and Sequential models")
        self.top_inputs = {id(t): i for i, t in enumerate(graph.inputs)}
        self._index(graph, set())

    def key(self, op):
        return self.keys.get(id(op), op.name)

    def _index(self, graph, seen):
        if id(graph) in seen:  # a nested model called twice: its graph is indexed once
            return
        seen.add(id(graph))
        for node in compat.graph_nodes(graph):
            op = node.operation
            self.nodes.setdefault(id(op), []).append(node)
            for t in node.outputs:
                self.producer[id(t)] = node
            inner = compat.graph_of(op) if isinstance(op, keras.Model) else None
            if inner is not None and not node.is_input:
                for t, outer in zip(inner.inputs, node.input_tensors):
                    self.alias.setdefault(id(t), outer)
                for outer, t in zip(node.outputs, inner.outputs):
                    self.alias[id(outer)] = t
                self._index(inner, seen)

    # -- backward: where a layer's new rows come from ------------------------------------

    def feeding_input(self, layer, rule):
        """The top model input (its index) whose last features reach `layer`'s last rows, else a SpecError."""
        tensor = self.nodes[id(layer)][0].input_tensors[0]
        while id(tensor) not in self.top_inputs:
            if id(tensor) in self.alias:
                tensor = self.alias[id(tensor)]
                continue
            node = self.producer.get(id(tensor))
            op = None if node is None else node.operation
            if op is None or node.is_input:
                raise self.where.error(rule.path + ("rows",), f"layer {rule.layer!r} is not fed by a model input")
            name = type(op).__name__
            if self._passes(op, node) is None or name == "BatchNormalization":
                tensor = node.input_tensors[0]
            elif name == "Concatenate" and self._last_axis(op.axis, node):
                tensor = node.input_tensors[-1]  # new rows at the end come from its last input
            else:
                hint = f"; grow the units of {self.key(op)!r} instead" if kinds.kind_of(op) else ""
                raise self.where.error(
                    rule.path + ("rows",),
                    f"layer {rule.layer!r} is fed by {self.key(op)!r} ({name}), not by a model input, so its "
                    f"input cannot grow alone{hint}",
                )
        return self.top_inputs[id(tensor)]

    # -- forward: who follows ------------------------------------------------------------

    def follow(self, input_growth):
        """Propagate growth from the grown inputs (`{index: (n, rule)}`) and the named layers.

        Returns `{(id(graph), input index): n}` of every (nested) model input that grows.
        """
        graph = compat.graph_of(self.model)
        flows = [
            Flow(input_growth[i][0], f"model input {t.name!r}", input_growth[i][1]) if i in input_growth else None
            for i, t in enumerate(graph.inputs)
        ]
        self._run(graph, flows)
        return self.inputs

    def _run(self, graph, flows):
        for i, flow in enumerate(flows):
            if flow is not None:
                self.inputs[(id(graph), i)] = flow.n
        growth = {id(t): flow for t, flow in zip(graph.inputs, flows) if flow is not None}
        for node in compat.graph_nodes(graph):
            if not node.is_input:
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

    def _same_every_call(self, op, flows, what):
        """Refuse a layer (or nested model) called at several places on inputs that grow differently."""
        counts = tuple(0 if f is None else f.n for f in flows)
        rule = next((f.rule for f in flows if f is not None), None)
        first = self.calls.setdefault(id(op), (counts, rule))
        if first[0] != counts:
            rule = rule or first[1]
            raise self.where.error(
                rule.path, f"{what} {self.key(op)!r} is called at several places, on inputs that grow differently"
            )

    def _through(self, node, ins):
        op = node.operation
        inner = compat.graph_of(op) if isinstance(op, keras.Model) else None
        kind = kinds.kind_of(op)
        if inner is not None:
            self._same_every_call(op, ins, "model")
            return self._run(inner, ins)
        grown = [f for f in ins if f is not None]
        for flow in grown:
            if flow.mixed:
                raise self._refuse(op, flow, flow.mixed)
        if kind is not None:
            return [self._kind_node(node, kind, ins[0] if ins else None)]
        if not grown:
            return [None] * len(node.outputs)
        flow, name = grown[0], type(op).__name__
        if name == "BatchNormalization":
            if not self._last_axis(op.axis, node):
                raise self._refuse(op, flow, f"it normalizes axis {op.axis}, not the features")
            self._same_every_call(op, ins, "layer")
            self._record(op, flow, plan=False)
            return [flow]
        if name == "Concatenate":
            if not self._last_axis(op.axis, node):
                raise self._refuse(op, flow, f"it concatenates axis {op.axis}, not the features")
            if any(f is not None for f in ins[:-1]):
                raise self._refuse(op, flow, "only its last input may grow (new features go at the end)")
            return [flow]
        if name in ELEMENTWISE:
            if len(grown) != len(ins) or len({f.n for f in grown}) != 1:
                raise self._refuse(op, flow, "its other inputs do not grow alike")
            return [flow]
        why = self._passes(op, node)
        if why is not None:
            raise self._refuse(op, flow, why)
        if name == "Softmax" or getattr(getattr(op, "activation", None), "__name__", None) in MIXING:
            return [dataclasses.replace(flow, mixed=f"{self.key(op)!r} applies a softmax over them, so the old features change")]
        return [flow]

    def _passes(self, op, node):
        """None if `op` acts on each feature alone, else why not."""
        if type(op).__name__ not in PASS_THROUGH:
            return CANNOT_FOLLOW
        if getattr(op, "data_format", "channels_last") != "channels_last":
            return f"its data_format is {op.data_format}, so the features are not its last axis"
        if type(op).__name__ == "Rescaling" and (np.ndim(op.scale) or np.ndim(op.offset)):
            return "its scale or offset has an entry per feature"
        return None

    @staticmethod
    def _last_axis(axis, node):
        return axis in (-1, len(node.outputs[0].shape) - 1)

    def _kind_node(self, node, kind, flow):
        op = node.operation
        growth = self.growths.get(id(op))
        if compat.node_kwargs(node).get("reverse"):  # a ReversibleEmbedding's logits: dimensions in, tokens out
            units = growth.units if growth else 0
            if (flow.n if flow else 0) != units:
                raise self.where.error(
                    flow.rule.path if flow else growth.rules[0].path,
                    f"layer {self.key(op)!r}: its logits read {flow.n if flow else 0} new features "
                    f"but its dimensions grow by {units}",
                )
            return Flow(growth.rows, repr(growth.key), growth.rules[0]) if growth and growth.rows else None
        self._same_every_call(op, [flow], "layer")
        if flow is not None:
            growth = self._record(op, flow)
            rows_last, _ = kind.grow_flow(op, growth.plan)
            if not rows_last:
                why = "it reads token ids" if rows_last is None else "its rows are not the last axis of its input"
                raise self._refuse(op, flow, why)
        if growth is None or not growth.units:
            return None
        out = Flow(growth.units, repr(growth.key), growth.rules[0])
        if not kind.grow_flow(op, growth.plan)[1]:
            why = f"they are not the last axis of the output of {growth.key!r} (its features)"
            return dataclasses.replace(out, mixed=why)
        if getattr(getattr(op, "activation", None), "__name__", None) in MIXING:
            return dataclasses.replace(out, mixed=f"{growth.key!r} applies a softmax over its units, so its old features change")
        return out

    def _record(self, op, flow, plan=True):
        """Note that `op` grows by `flow.n` rows, because of `flow.rule`."""
        growth = self.growths.get(id(op))
        if growth is None:
            key = self.key(op)
            growth = self.growths[id(op)] = Growth(op, key)
            if plan:
                growth.plan = geometry(op, key, flow.rule.path, self.where)
        growth.rows = flow.n
        if flow.rule not in growth.rules:
            growth.rules.append(flow.rule)
        return growth


# ------------------------------------------------------------------------------------


def grow_model(model, grow, freeze=None, form="auto"):
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
        form: How split layers are made, as for `split_model`.

    Returns:
        The grown split model, compiled as `model` was (fresh optimizer).

    Raises:
        SpecError: a rule that does not fit the model (a layer that cannot
            follow, a bad count), with the key path in front.
        ModelError: the model is subclassed, or Keras cannot rebuild it.

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, name="classes")(inputs))
        >>> grown = splitnet.grow_model(model, {"classes": {"units": 2}})
        >>> grown.output.shape, [tuple(w.shape) for w in grown.trainable_weights]
        ((None, 5), [(4, 2), (2,)])
    """
    where = spec_lib.Where()
    rules, freeze = spec_lib.parse_grow(grow, where), spec_lib.parse_freeze(freeze, where)
    return grow_parsed(model, rules, freeze, where, spec_lib.check_form(form, where))


def grow_parsed(model, rules, freeze, where, form="auto"):
    """`grow_model` on parsed rules (`spec.GrowRule`, `spec.FreezeRule`); errors located by `where`."""
    split_layer = next((key for key, layer in tree.walk(model) if kinds.is_split(layer)), None)
    if split_layer is not None:
        raise where.error(
            rules[0].path if rules else ("grow",),
            f"layer {split_layer!r} is split; merge the model before growing it",
        )
    growths, input_growth = {}, {}
    graph = _Graph(model, where, growths)
    for rule in rules:
        _start(model, graph, rule, where, input_growth)
    inputs = graph.follow(input_growth)
    copy = _rebuild(model, growths, inputs, where)
    targets = split.plan_layers(copy, _freeze_rules(model, growths, freeze, where), where)
    old = {growth.key: growth.plan for growth in growths.values() if growth.plan is not None}
    paths = {id(layer): key for key, layer in tree.walk(copy)}  # a rule may name a layer by a shorter path
    for layer_id, (layer, key, plan, kind, rule) in list(targets.items()):
        before = old.get(paths[layer_id])
        if before is not None:
            plan = dataclasses.replace(plan, grown_from=(before.in_dim, before.units))
        targets[layer_id] = (layer, key, plan, kind, rule)
    copy = split.split_targets(copy, targets, form, where, copy=False)
    saving.compile_like(copy, model)
    return copy


def _start(model, graph, rule, where, input_growth):
    """Check one rule; note its layer's growth, and the model input its new rows come from."""
    layer = split.layer_at(model, rule, where, split.splittable_keys)
    kind = kinds.kind_of(layer)
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
    if id(layer) in graph.growths:
        raise where.error(rule.path, f"layer {rule.layer!r} is named twice", key=True)
    key = graph.key(layer)  # the path, also when the rule names it by a shorter one
    plan = geometry(layer, key, rule.path, where)
    growth = graph.growths[id(layer)] = Growth(layer, key, rule.units, rules=[rule], plan=plan, named=True)
    if not rule.rows:
        return
    if growth.tokens:
        growth.rows = rule.rows  # an embedding's tokens: in its config, not its input
        return
    if not kind.grow_flow(layer, plan)[0]:
        raise where.error(rule.path + ("rows",), f"layer {rule.layer!r}: its rows are not the last axis of its input")
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
        entry = saving.config_entry(config, graphs[graph_id])
        layer_config = _input_entry(entry, index, graphs[graph_id] or model.name)["config"]
        layer_config["batch_shape"] = list(layer_config["batch_shape"][:-1]) + [layer_config["batch_shape"][-1] + n]
    for growth in growths.values():
        if growth.plan is None or not (growth.units or (growth.rows and growth.tokens)):
            continue  # rows from the input: the rebuilt graph gives them
        parent_key, _, name = growth.key.rpartition("/")
        parent = saving.config_entry(config, parent_key)
        entry = saving.config_child(parent, name)
        if entry is not None:
            entry["config"] = growth.kind.grow_config(growth.layer, growth.plan, entry["config"], growth.units, growth.rows)
        elif not _grow_argument(parent, growth):
            raise where.error(
                growth.rules[0].path,
                f"layer {growth.key!r} is made by the code of {parent.get('class_name')} "
                f"{parent_key or model.name!r}, which sets its size from its own arguments; splitnet grows "
                "layers listed in a Functional or Sequential model's config, and a keras-hub backbone's "
                "token embedding",
            )
    _forget_built_shapes(config)
    copy = saving.rebuild(model, config)
    _fill(model, copy, growths)
    return copy


def _grow_argument(parent, growth):
    """Grow a layer that its parent builds from its config: a keras-hub backbone's
    `vocabulary_size` sets its token embedding's tokens (and a tied head's logits)."""
    config = parent.get("config", {})
    if growth.tokens and not growth.units and config.get("vocabulary_size") == growth.plan.in_dim:
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
        b.name = a.name  # a layer whose config leaves out its name gets a new one
        growth, kind = growths.get(id(a)), kinds.kind_of(a)
        if kind is not None:
            old, fresh = kind.merged_weights(a), kind.merged_weights(b)
            if growth is None:
                roles, counts, init = [{}] * len(old), {}, "layer"
            else:
                roles = kind.grow_roles(a, growth.plan, rows=growth.rows, units=growth.units)
                counts = {"rows": growth.rows, "units": growth.units}
                init = growth.rules[0].init if growth.named else "layer"
            b.set_weights([_grown(key, o, f, r, counts, init) for o, f, r in zip(old, fresh, roles)])
            continue
        # Not splittable: the same weights, or a BatchNormalization that follows
        # (its new features get the fresh layer's statistics).
        roles = {} if growth is None else {-1: ("rows", "out")}
        counts = {} if growth is None else {"rows": growth.rows}
        for variable, value in zip(tree.own_weights(b), tree.own_weights(a)):
            old = np.asarray(value)
            variable.assign(_grown(key, old, np.asarray(variable), {a % old.ndim: r for a, r in roles.items()}, counts, "layer"))


def _grown(key, old, fresh, roles, counts, init):
    """`grow_array`, after checking that Keras built the shape that growing predicts."""
    expected = tuple(n + (counts[roles[axis][0]] if axis in roles else 0) for axis, n in enumerate(old.shape))
    if expected != fresh.shape:
        raise ModelError(
            f"layer {key!r} changed shape unexpectedly when the model grew: expected {expected}, Keras built {fresh.shape}"
        )
    return grow_array(old, fresh, roles, init)


def grow_array(old, fresh, roles, init):
    """One weight, grown: old entries kept; new inputs into old outputs zero; the rest per `init`.

    Args:
        old: The weight before growing.
        fresh: The same weight of the rebuilt layer (its initializers' values).
        roles: `{axis: (count, role)}` from the kind's `grow_roles`.
        init: "layer" (`fresh`), "zeros", or "mean" (the mean of the old outputs along the "mean" axis).

    Example:
        >>> grow_array(np.ones((2, 2)), np.full((3, 3), 7.0), {0: ("rows", "in"), 1: ("units", "mean")},
        ...            "layer").tolist()
        [[1.0, 1.0, 7.0], [1.0, 1.0, 7.0], [0.0, 0.0, 7.0]]
    """
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


def _freeze_rules(model, growths, freeze, where):
    """The default rules (old entries of grown layers frozen) plus the user's, which win.

    Each default rule is located at the grow rule it comes from.
    """
    named = {id(tree.find(model, rule.layer)) for rule in freeze}
    rules = []
    for growth in growths.values():
        if growth.plan is None or id(growth.layer) in named or not any(r.freeze_old for r in growth.rules):
            continue
        plan = growth.plan
        if growth.units and not (growth.tokens and growth.rows):
            entry = {"units": f":{plan.units}"}
            if plan.use_bias and plan.bias_axis is None:
                entry["bias"] = True  # a bias shared by all units is old
        else:  # an embedding's old tokens, or a layer's old rows and its bias
            entry = {"rows": f":{plan.in_dim}"}
            if plan.use_bias:
                entry["bias"] = True
        (rule,) = spec_lib.parse_freeze({growth.key: entry}, where, path=("grow",))
        rules.append(dataclasses.replace(rule, path=growth.rules[0].path))
    return tuple(rules) + tuple(freeze)


__all__ = ["grow_model"]
