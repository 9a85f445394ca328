"""EinsumDense: `units` and `rows` along chosen kernel axes (attention heads by default).

An EinsumDense computes `einsum(equation, x, kernel) + bias`. Each kernel
axis (a letter of the equation) either stays in the output, like a Dense
column, or is summed over, like a Dense row. By default `units` index the
first kernel axis that stays in the output and `rows` the first one that is
summed over; `axis: LETTER` in a rule picks another. For attention
projections these defaults are the heads:

    Keras MultiHeadAttention   query/key/value "abc,cde->abde"  units: d (heads)
                               attention_output "abcd,cde->abe" rows: c (heads)
    keras-hub Gemma            query "btd,ndh->btnh"            units: n (heads)
                               attention_output "btnh,nhd->btd" rows: n (heads)

Bias entries go with the units they belong to; a bias without the units
axis is shared by all units and frozen only with `bias: true` (or when every
unit is). The `heads:` rule on a whole attention layer (`heads_rules`) is
written in terms of these defaults.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from splitnet.kinds.pieces import KernelSplitLayer, Kind, split_class
from splitnet.plan import resolve
from splitnet.spec import FreezeRule


@dataclasses.dataclass(frozen=True)
class Equation:
    """The parts of an EinsumDense equation, e.g. "abc,cde->abde".

    Example:
        >>> eq = Equation.parse("abc,cde->abde")
        >>> eq.unit_letters, eq.row_letters, eq.input_axis("c"), eq.output_axis("d")
        ('de', 'c', 2, 2)
    """

    inputs: str  # letters, without "..."
    kernel: str
    output: str
    inputs_left_elided: bool
    output_left_elided: bool

    @classmethod
    def parse(cls, equation):
        inputs, rest = equation.replace(" ", "").split(",")
        kernel, output = rest.split("->")
        return cls(
            inputs.replace("...", ""),
            kernel,
            output.replace("...", ""),
            inputs.startswith("..."),
            output.startswith("..."),
        )

    @property
    def unit_letters(self):
        """Kernel axes that stay in the output (and are not in the input)."""
        return "".join(c for c in self.kernel if c in self.output and c not in self.inputs)

    @property
    def row_letters(self):
        """Kernel axes that are summed over."""
        return "".join(c for c in self.kernel if c in self.inputs and c not in self.output)

    def input_axis(self, letter):
        i = self.inputs.index(letter)
        return i - len(self.inputs) if self.inputs_left_elided else i

    def output_axis(self, letter):
        i = self.output.index(letter)
        return i - len(self.output) if self.output_left_elided else i

    def bias_axis(self, letter, bias_axes):
        """The axis of `letter` in a bias over `bias_axes` (shaped as Keras shapes it), or None."""
        if not bias_axes or letter not in bias_axes:
            return None
        first = min(self.output.index(c) for c in bias_axes)
        return self.output[first:].index(letter)


class _SplitEinsumDense(KernelSplitLayer):
    """An EinsumDense whose chosen units and rows (by default: attention heads) are frozen, exactly.

    Made by `splitnet.split_model` from a built EinsumDense, in place; see
    `SplitDense` for how the pieces train, save and merge.

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((5, 8))
        >>> query = keras.layers.EinsumDense("abc,cde->abde", (5, 4, 2), bias_axes="de", name="q")
        >>> model = keras.Model(inputs, query(inputs))
        >>> layer = splitnet.split_model(model, {"q": {"units": [0, 1]}}, form="in_place").get_layer("q")
        >>> [tuple(w.shape) for w in layer.trainable_weights]
        [(8, 2, 2), (2, 2)]
    """

    kind_name = "EinsumDense"

    def _init_split(self, plan, key=None):
        super()._init_split(plan, key)
        eq = Equation.parse(self.equation)
        self._in_axis = eq.input_axis(eq.kernel[plan.row_axis])
        self._out_axis = eq.output_axis(eq.kernel[plan.unit_axis])

    def call(self, inputs, training=None):
        y = self._tables[0].apply(inputs, self._product, self._in_axis, self._out_axis)
        return y if self.activation is None else self.activation(y)

    def _product(self, x, kernel):
        return ops.einsum(self.equation, x, kernel)

    def head_blocks(self, inputs):
        """The outputs of each unit block (trainable heads, frozen heads), not joined
        (see `attention.py`)."""
        blocks = self._tables[0].blocks(inputs, self._product, self._in_axis)
        return blocks if self.activation is None else [self.activation(b) for b in blocks]

    def from_head_blocks(self, blocks):
        """The output for an input given as its row blocks (trainable heads, frozen heads)."""
        pieces = self._tables[0]
        (y,) = pieces.blocks(None, self._product, self._in_axis, views=blocks)
        if pieces.bias is not None and not pieces.plan.bias_per_unit:
            y = ops.add(y, pieces.bias)
        return y if self.activation is None else self.activation(y)


SplitEinsumDense = split_class(keras.layers.EinsumDense, _SplitEinsumDense, "SplitEinsumDense")


class _EinsumKind(Kind):
    name = "EinsumDense"
    takes_axis = True
    splits = {keras.layers.EinsumDense: SplitEinsumDense}

    def letters(self, layer, rule, where):
        """(units letter, rows letter) for a rule: the defaults, or `axis: LETTER` for one of them."""
        eq = Equation.parse(layer.equation)
        units = eq.unit_letters[:1] or None
        rows = eq.row_letters[:1] or None
        if rule.axis is not None:
            letter, path = rule.axis, rule.path + ("axis",)
            said = f"axis {letter!r}"
            if letter not in eq.kernel:
                raise where.error(path, f"{said} is not a kernel axis of {layer.equation!r} (kernel {eq.kernel!r})")
            if letter in eq.unit_letters:
                if rule.units is None:
                    raise where.error(path, f"{said} stays in the output of {layer.equation!r}, so it names units; give units")
                units = letter
            elif letter in eq.row_letters:
                if rule.rows is None:
                    raise where.error(path, f"{said} is summed over in {layer.equation!r}, so it names rows; give rows")
                rows = letter
            else:
                raise where.error(path, f"{said} is in the input and the output of {layer.equation!r}; it cannot be split")
        if units is None or rows is None:
            missing = "stays in the output" if units is None else "is summed over"
            raise where.error(rule.path, f"layer {rule.layer!r}: no kernel axis of {layer.equation!r} {missing}")
        return units, rows

    def plan(self, layer, rule, where):
        """A checked `KernelPlan` along the rule's units and rows letters."""
        self.check_bias(layer.bias is not None, rule, where, "bias_axes=None")
        units, rows = self.letters(layer, rule, where)
        eq = Equation.parse(layer.equation)
        shape = tuple(int(d) for d in layer.kernel.shape)
        use_bias = layer.bias is not None
        plan = self.resolve_plan(
            rule,
            where,
            shape,
            eq.kernel.index(rows),
            eq.kernel.index(units),
            (f"units (axis {units!r})", f"rows (axis {rows!r})"),
            use_bias,
            bias_shape=tuple(int(d) for d in layer.bias.shape) if use_bias else None,
            bias_axis=eq.bias_axis(units, layer.bias_axes) if use_bias else 0,
        )
        self.check_common(layer, rule, where)
        self.check_constraints(layer, rule, plan, where, per_unit_axes=())
        return plan

    # -- the functional form: pieces are EinsumDense layers of the same equation ------

    def functional_axes(self, layer, plan):
        eq = Equation.parse(layer.equation)
        units, rows = eq.kernel[plan.unit_axis], eq.kernel[plan.row_axis]
        return eq.input_axis(rows), eq.output_axis(units), plan.unit_axis, {}

    def functional_candidates(self, piece):
        """Every (units letter, rows letter) a rule can name: the defaults, or one `axis:`."""
        eq = Equation.parse(piece.equation)
        out = []
        for u, units in enumerate(eq.unit_letters):
            for r, rows in enumerate(eq.row_letters):
                if u and r:
                    continue  # one rule names one axis
                extra = {"axis": units} if u else {"axis": rows} if r else {}
                out.append((eq.input_axis(rows), eq.output_axis(units), eq.kernel.index(units), extra))
        return out

    def resized(self, config, layer, unit_axis, units, rows=None):
        eq = Equation.parse(config["equation"])
        shape = config["output_shape"]
        shape = list(shape) if isinstance(shape, (list, tuple)) else [shape]
        shape[eq.output.index(eq.kernel[unit_axis]) - (0 if eq.output_left_elided else 1)] = units
        return {**config, "output_shape": shape}

    def with_bias(self, config, use_bias, template):
        return {**config, "bias_axes": template.bias_axes if use_bias else None}

    def has_bias(self, layer):
        return layer.bias_axes is not None

    def grow_config(self, layer, plan, config, units, rows):
        """`output_shape` (the output's sizes after the batch axis, or after "...") grows."""
        eq = Equation.parse(layer.equation)
        shape = config["output_shape"]
        shape = list(shape) if isinstance(shape, (list, tuple)) else [shape]
        letter = eq.kernel[plan.unit_axis]
        shape[eq.output.index(letter) - (0 if eq.output_left_elided else 1)] += units
        return {**config, "output_shape": shape}

    def grow_flow(self, layer, plan):
        lhs, rest = layer.equation.replace(" ", "").split(",")
        kernel, output = rest.split("->")
        return lhs.endswith(kernel[plan.row_axis]), output.endswith(kernel[plan.unit_axis])


KIND = _EinsumKind()

# The four projections of an attention layer, and which word selects heads in each.
PROJECTIONS = (("query", "units"), ("key", "units"), ("value", "units"), ("attention_output", "rows"))


def heads_rules(layer, rule, where, find):
    """Expand `heads:` on an attention layer into a rule per projection.

    `units: HEADS` on query, key and value, `rows: HEADS` on
    attention_output: the same heads frozen in all four, in Keras'
    `MultiHeadAttention` (and keras-hub's layers built like it) or any layer
    whose sub-layers `query`, `key`, `value` and `attention_output` are
    EinsumDense layers with the heads as their default axes.

    Args:
        layer: The attention layer.
        rule: The `FreezeRule` with `heads`.
        where: `spec.Where`.
        find: `find(path)` -> the layer at that path, or None.
    """
    rules, counts = [], {}
    for name, word in PROJECTIONS:
        key = f"{rule.layer}/{name}"
        projection = find(key)
        if isinstance(projection, SplitEinsumDense):
            raise where.error(rule.path, f"layer {rule.layer!r} is already split; merge the model first", key=True)
        if type(projection) is not keras.layers.EinsumDense:
            raise where.error(
                rule.path + ("heads",),
                f"layer {rule.layer!r} ({type(layer).__name__}) has no EinsumDense {name!r}; heads: applies to "
                "attention layers with query, key, value and attention_output projections",
            )
        eq = Equation.parse(projection.equation)
        letters = eq.unit_letters if word == "units" else eq.row_letters
        counts[name] = int(projection.kernel.shape[eq.kernel.index(letters[0])])
        rules.append(
            FreezeRule(
                layer=key,
                units=rule.heads if word == "units" else None,
                rows=rule.heads if word == "rows" else None,
                bias=False,
                path=rule.path + ("heads",),
                axis=None,
                heads=None,
            )
        )
    if len(set(counts.values())) != 1:
        shown = ", ".join(f"{name} {count}" for name, count in counts.items())
        raise where.error(
            rule.path + ("heads",),
            f"layer {rule.layer!r} has different head counts ({shown}), e.g. grouped-query attention; "
            "freeze its projections one by one",
        )
    resolve(rule.heads, counts["query"], "heads", rule.layer, where)  # errors name the attention layer
    return rules
