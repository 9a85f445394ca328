"""The index plan of one split Dense layer: the only index arithmetic in splitnet.

A Dense layer computes `y = x @ W + b` with `W` of shape (in_dim, units). An
entry `W[i, j]` is frozen when row `i` or column `j` is frozen; `b[j]` is
frozen when column `j` is frozen or the whole bias is. `DensePlan` turns that
into parallel pieces, each an ordinary Dense on all or some input rows:

    role          input rows         columns      trainable
    frozen        all                frozen       no
    trainable     trainable rows     trainable    yes
    frozen_rows   frozen rows        trainable    no

`trainable` and `frozen_rows` are summed (`sum`), the result is joined with
`frozen` in the original column order, and the activation is applied once.
The bias of the trainable columns rides on the piece whose trainability it
shares, or on a separate `bias` layer when there is no such piece.

When the layer's input is another split Dense's output whose frozen units
feed nothing trainable (that layer reads the data), `input_blocks` splits
every piece once more along that producer's trainable and frozen units, and
the pieces read the producer's blocks directly: autodiff then never computes
the input gradient towards the producer's frozen units, which nothing needs.
This changes only the structure, never what is frozen.

`split_weights` and `merge_weights` read the same pieces, so split and merge
cannot disagree about where an entry went.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SEP = "__"  # generated layer names: f"{layer}{SEP}{role}" (Keras forbids "/")


def runs(indices):
    """Sorted indices -> list of half-open `(start, stop)` runs.

    Example:
        >>> runs([0, 1, 2, 5, 7, 8])
        [(0, 3), (5, 6), (7, 9)]
    """
    out = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def from_runs(pairs):
    return tuple(i for start, stop in pairs for i in range(start, stop))


def as_index(indices):
    """A slice when `indices` is one contiguous run (cheap views), else an array."""
    r = runs(indices)
    if len(r) == 1:
        return slice(*r[0])
    return np.asarray(indices, dtype=np.int64)


def resolve(index_set, size, noun, layer, where):
    """Resolve a parsed `spec.IndexSet` against a layer dimension.

    Args:
        index_set: The `IndexSet` from the spec.
        size: The layer's number of units (or input rows).
        noun: "units" or "input rows", for messages.
        layer: The layer's name, for messages.
        where: `spec.Where` to locate errors.

    Returns:
        A sorted tuple of distinct non-negative indices.

    Raises:
        SpecError: out of range, reversed or empty range, or overlapping entries.
    """
    if index_set.is_all:
        return tuple(range(size))
    has = f"layer {layer!r} has {size} {noun}"
    owner = {}
    for item in index_set.items:
        if isinstance(item.value, int):
            if not -size <= item.value < size:
                raise where.error(item.path, f"{item.value} is out of range, {has}")
            chosen = [item.value % size]
        else:
            start, stop = item.value
            for bound in (start, stop):
                if bound is not None and not -size <= bound <= size:
                    raise where.error(item.path, f"range {item.text!r}: {bound} is out of range, {has}")
            start = 0 if start is None else start + size if start < 0 else start
            stop = size if stop is None else stop + size if stop < 0 else stop
            if start > stop:
                raise where.error(item.path, f"range {item.text!r} is reversed ({start} > {stop}); write start:stop")
            if start == stop:
                raise where.error(item.path, f"range {item.text!r} is empty")
            chosen = range(start, stop)
        for i in chosen:
            if i in owner:
                raise where.error(item.path, f"{item.text!r} overlaps {owner[i]!r} (both include {i})")
            owner[i] = item.text
    return tuple(sorted(owner))


@dataclasses.dataclass(frozen=True)
class Piece:
    """One Dense sub-layer of a split group.

    Attributes:
        role: "frozen", "trainable", "frozen_rows", or with `input_blocks`
            "frozen_from0", "frozen_from1", "trainable_from0", "trainable_from1".
        rows: Input rows it reads (None: all of them, no selection needed).
        cols: Output columns of the original layer it computes.
        use_bias: Whether it carries the bias of its columns.
        frozen: Whether it is non-trainable.
    """

    role: str
    rows: tuple | None
    cols: tuple
    use_bias: bool
    frozen: bool
    block: int = 0  # the joined block it adds into: 0 the trainable columns, 1 the frozen ones
    source: int | None = None  # None: the layer's input; i: the producer's block i (see input_blocks)


def _cells(piece):
    """Index of a piece's kernel block in the original kernel (slices where possible)."""
    rows = slice(None) if piece.rows is None else as_index(piece.rows)
    cols = as_index(piece.cols)
    if isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray):
        return np.ix_(rows, cols)
    return rows, cols


@dataclasses.dataclass(frozen=True)
class DensePlan:
    """How one Dense layer is split, and how its weights map to the pieces.

    Example:
        >>> plan = DensePlan("head", in_dim=4, units=3, use_bias=True,
        ...                  frozen_units=(0,), frozen_rows=(), bias_frozen=False)
        >>> [p.role for p in plan.pieces]
        ['frozen', 'trainable']
        >>> plan.kernel_mask()[:, 0].all(), plan.kernel_mask()[:, 1].any()
        (True, False)
    """

    name: str
    in_dim: int
    units: int
    use_bias: bool
    frozen_units: tuple
    frozen_rows: tuple
    bias_frozen: bool
    # When the input is a split Dense's output whose frozen units feed nothing
    # trainable: that producer's (trainable units, frozen units). Each piece is
    # then split along these rows and reads the producer's blocks directly, so
    # autodiff skips the input gradient towards the producer's frozen units.
    # Structure only: it freezes nothing.
    input_blocks: tuple = ()

    # -- index sets -------------------------------------------------------

    @property
    def trainable_units(self):
        frozen = set(self.frozen_units)
        return tuple(j for j in range(self.units) if j not in frozen)

    @property
    def trainable_rows(self):
        frozen = set(self.frozen_rows)
        return tuple(i for i in range(self.in_dim) if i not in frozen)

    @property
    def fully_frozen(self):
        """True when nothing trains: the layer becomes one non-trainable Dense."""
        if not self.trainable_units:
            return True
        return not self.trainable_rows and (self.bias_frozen or not self.use_bias)

    def kernel_mask(self):
        """Bool array (in_dim, units), True where the kernel is frozen."""
        mask = np.zeros((self.in_dim, self.units), dtype=bool)
        mask[list(self.frozen_rows), :] = True
        mask[:, list(self.frozen_units)] = True
        return mask

    def bias_mask(self):
        """Bool array (units,), True where the bias is frozen; shape (0,) without bias."""
        if not self.use_bias:
            return np.zeros((0,), dtype=bool)
        mask = np.full((self.units,), self.bias_frozen)
        mask[list(self.frozen_units)] = True
        return mask

    # -- structure ----------------------------------------------------------

    @property
    def pieces(self):
        """The Dense pieces, in the order their outputs are joined."""
        if self.fully_frozen:
            return ()
        t_cols, f_cols = self.trainable_units, self.frozen_units
        t_rows, f_rows = self.trainable_rows, self.frozen_rows
        if self.input_blocks:
            out = []
            for kind, cols, frozen in (("frozen", f_cols, True), ("trainable", t_cols, False)):
                bias = self.use_bias and (frozen or not self.bias_frozen)
                for source, rows in enumerate(self.input_blocks):
                    if cols:
                        piece = Piece(f"{kind}_from{source}", rows, cols, bias and source == 0, frozen, int(frozen), source)
                        out.append(piece)
            return tuple(out)
        all_rows = None
        out = []
        if f_cols:
            out.append(Piece("frozen", all_rows, f_cols, self.use_bias, True, block=1))
        if t_rows:
            rows = all_rows if not f_rows else t_rows
            bias = self.use_bias and not self.bias_frozen
            out.append(Piece("trainable", rows, t_cols, bias, False))
        if f_rows:
            rows = all_rows if not t_rows else f_rows
            bias = self.use_bias and self.bias_frozen and bool(t_rows)
            out.append(Piece("frozen_rows", rows, t_cols, bias, True))
        return tuple(out)

    @property
    def bias_layer(self):
        """None, or "frozen"/"trainable": a separate bias for the trainable columns.

        Needed when no piece shares the bias's trainability: `bias: true` with
        no frozen rows, or every row frozen while the bias trains.
        """
        if self.fully_frozen or not self.use_bias:
            return None
        if any(p.use_bias and p.cols == self.trainable_units for p in self.pieces):
            return None
        return "frozen" if self.bias_frozen else "trainable"

    def layer_roles(self):
        """Roles of every generated layer but the join: pieces, input selections, sum, bias."""
        roles = []
        for piece in self.pieces:
            roles.append(piece.role)
            if piece.rows is not None and piece.source is None:
                roles.append(piece.role + "_in")
        roles += [f"input{i}" for i in range(len(self.input_blocks))]
        for block, role in ((0, "sum"), (1, "sum_frozen")):
            if sum(p.block == block for p in self.pieces) > 1:
                roles.append(role)
        if self.bias_layer:
            roles.append("bias")
        return roles

    def layer_name(self, role):
        return f"{self.name}{SEP}{role}"

    def role_masks(self, role):
        """(kernel mask, bias mask) of the entries that the layer with `role` holds."""
        kernel = np.zeros((self.in_dim, self.units), dtype=bool)
        bias = np.zeros((self.units if self.use_bias else 0,), dtype=bool)
        if role == "bias":
            if self.bias_layer:
                bias[list(self.trainable_units)] = True
            return kernel, bias
        for piece in self.pieces:
            if piece.role == role:
                kernel[_cells(piece)] = True
                if piece.use_bias:
                    bias[list(piece.cols)] = True
        return kernel, bias

    # -- weights --------------------------------------------------------------

    def split_weights(self, kernel, bias=None):
        """Original (kernel, bias) -> {role: [kernel, (bias)]}, plus "bias": [b]."""
        out = {}
        for piece in self.pieces:
            out[piece.role] = [np.ascontiguousarray(kernel[_cells(piece)])]
            if piece.use_bias:
                out[piece.role].append(np.ascontiguousarray(bias[as_index(piece.cols)]))
        if self.bias_layer:
            out["bias"] = [np.ascontiguousarray(bias[as_index(self.trainable_units)])]
        return out

    def merge_weights(self, weights, dtype):
        """Inverse of `split_weights`: {role: arrays} -> [kernel] or [kernel, bias]."""
        kernel = np.empty((self.in_dim, self.units), dtype=dtype)
        bias = np.empty((self.units,), dtype=dtype) if self.use_bias else None
        for piece in self.pieces:
            values = weights[piece.role]
            kernel[_cells(piece)] = values[0]
            if piece.use_bias:
                bias[as_index(piece.cols)] = values[1]
        if self.bias_layer:
            bias[as_index(self.trainable_units)] = weights["bias"][0]
        return [kernel] if bias is None else [kernel, bias]

    # -- order restoring ----------------------------------------------------

    def join_order(self):
        """How to lay the joined pieces out in the original column order.

        The joined layer sees two blocks: the trainable columns (in order),
        then the frozen ones. Returns `(segments, perm)`: `segments` lists
        `(block, start, stop)` slices whose concatenation is the original
        order; `perm[j]` is the position of column `j` in `concat(blocks)`.
        """
        position = {}
        for offset, j in enumerate(self.trainable_units):
            position[j] = (0, offset)
        for offset, j in enumerate(self.frozen_units):
            position[j] = (1, offset)
        segments = []
        for j in range(self.units):
            block, offset = position[j]
            if segments and segments[-1][0] == block and segments[-1][2] == offset:
                segments[-1][2] = offset + 1
            else:
                segments.append([block, offset, offset + 1])
        n_t = len(self.trainable_units)
        perm = [offset + (n_t if block else 0) for block, offset in (position[j] for j in range(self.units))]
        return [tuple(s) for s in segments], perm

    # -- serialization ------------------------------------------------------

    def get_config(self):
        return {
            "name": self.name,
            "in_dim": self.in_dim,
            "units": self.units,
            "use_bias": self.use_bias,
            "frozen_units": [list(r) for r in runs(self.frozen_units)],
            "frozen_rows": [list(r) for r in runs(self.frozen_rows)],
            "bias_frozen": self.bias_frozen,
            "input_blocks": [[list(r) for r in runs(block)] for block in self.input_blocks],
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["frozen_units"] = from_runs(config["frozen_units"])
        config["frozen_rows"] = from_runs(config["frozen_rows"])
        config["input_blocks"] = tuple(from_runs(block) for block in config.get("input_blocks", ()))
        return cls(**config)
