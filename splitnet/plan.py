"""The index plan of one split kernel: the only index arithmetic in splitnet.

Every kind splitnet splits has a kernel with one axis of *units* (it stays
in the output: Dense columns, Conv filters, attention heads of a query
projection, embedding dimensions) and one axis of *rows* (summed over, or
for an embedding table looked up: Dense input rows, Conv input channels,
heads of an attention output projection, token ids). For Dense, `W` of
shape (in_dim, units), computing `y = x @ W + b`: an entry `W[i, j]` is
frozen when row `i` or column `j` is frozen; `b[j]` is frozen when column
`j` is frozen or the whole bias is. Other kernels have more axes
(`KernelPlan.shape`); the rule is the same along `row_axis` and
`unit_axis`, every other axis goes along whole. `KernelPlan` turns that
into pieces, each a block of the kernel (some rows x some units) held in
its own variable, trainable or not:

    role          input rows         columns      trainable
    frozen        all                frozen       no
    trainable     trainable rows     trainable    yes
    frozen_rows   frozen rows        trainable    no

Pieces with the same columns are summed, the column blocks (trainable
columns, frozen columns) are joined in the original order, and the
activation is applied once. The bias of the trainable columns rides on the
piece whose trainability it shares, or is a variable of its own (`bias`).
A bias that has no units axis (an EinsumDense bias over other output axes)
is shared by all units: it is a variable of its own, frozen only with
`bias: true` or when every unit is frozen.

`split_weights` and `merge_weights` read the same pieces, so split and merge
cannot disagree about where an entry went.
"""

from __future__ import annotations

import dataclasses

import numpy as np

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


def format_indices(indices):
    """`[0, 1, 8, 9, 10, 63]` -> `"0:2, 8:11, 63"` (half-open runs, like the spec).

    Example:
        >>> format_indices([0, 1, 8, 9, 10, 63])
        '0:2, 8:11, 63'
    """
    parts = [str(a) if b == a + 1 else f"{a}:{b}" for a, b in runs(sorted(indices))]
    return ", ".join(parts) if parts else "-"


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
            if i in owner and owner[i] == item.text:
                raise where.error(item.path, f"{item.text!r} is listed twice")
            if i in owner:
                raise where.error(item.path, f"{item.text!r} overlaps {owner[i]!r} (both include {i})")
            owner[i] = item.text
    return tuple(sorted(owner))



@dataclasses.dataclass(frozen=True)
class Piece:
    """One block of a split kernel, held in its own variable(s).

    Attributes:
        role: Names the piece's variables: "frozen", "trainable" or "frozen_rows".
        rows: Input rows it reads, or None for all of them.
        cols: Output columns of the original layer it computes.
        use_bias: Whether it carries the bias of its columns.
        frozen: Whether its variables are non-trainable.
        block: The column block it adds into (`KernelPlan.blocks`).
        cut: The input block it reads, in a plan cut along its producer's
            blocks (`KernelPlan.row_cuts`); None otherwise.
    """

    role: str
    rows: tuple | None
    cols: tuple
    use_bias: bool
    frozen: bool
    block: int
    cut: int | None = None

    @property
    def name(self):
        """`role`, or `role_CUT` for a piece of a cut plan: unique within its plan."""
        return self.role if self.cut is None else f"{self.role}_{self.cut}"


def _cells(piece):
    """Index of a piece's kernel block in the original kernel (slices where possible)."""
    rows = slice(None) if piece.rows is None else as_index(piece.rows)
    cols = as_index(piece.cols)
    if isinstance(rows, np.ndarray) and isinstance(cols, np.ndarray):
        return np.ix_(rows, cols)
    return rows, cols


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    """How one kernel (and its bias) is split, and how its weights map to the pieces.

    Attributes:
        in_dim: Size of the rows axis.
        units: Size of the units axis.
        use_bias: Whether the layer has a bias.
        frozen_units, frozen_rows: Sorted frozen indices along those axes.
        bias_frozen: The rule's `bias: true`.
        shape: The whole kernel's shape; None for a 2-D (in_dim, units) kernel.
        row_axis, unit_axis: Where rows and units are in `shape`.
        bias_shape: The bias's shape; None for (units,).
        bias_axis: The units axis in the bias, or None for a bias without one.
        grown_from: `(rows, units)` the layer had before `grow_model` made it
            bigger (entries beyond them are new), or None.
        row_cuts: For a layer that reads a split producer's unit blocks as
            separate inputs (the functional form's cross-layer pruning), the
            rows each input carries, in order; every piece is then cut into
            one piece per input it reads. None otherwise.

    Example:
        >>> plan = KernelPlan(in_dim=4, units=3, use_bias=True,
        ...                   frozen_units=(0,), frozen_rows=(), bias_frozen=False)
        >>> [p.role for p in plan.pieces]
        ['trainable', 'frozen']
        >>> bool(plan.kernel_mask()[:, 0].all()), bool(plan.kernel_mask()[:, 1].any())
        (True, False)
    """

    in_dim: int
    units: int
    use_bias: bool
    frozen_units: tuple
    frozen_rows: tuple
    bias_frozen: bool
    shape: tuple | None = None
    row_axis: int = 0
    unit_axis: int = 1
    bias_shape: tuple | None = None
    bias_axis: int | None = 0
    grown_from: tuple | None = None
    row_cuts: tuple | None = None

    @property
    def kernel_shape(self):
        return (self.in_dim, self.units) if self.shape is None else tuple(self.shape)

    @property
    def full_bias_shape(self):
        """The bias's shape; (0,) without bias."""
        if not self.use_bias:
            return (0,)
        return (self.units,) if self.bias_shape is None else tuple(self.bias_shape)

    @property
    def bias_per_unit(self):
        return self.use_bias and self.bias_axis is not None

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
        """True when nothing trains: the whole kernel is one frozen piece."""
        if not self.trainable_units:
            return True
        return not self.trainable_rows and (self.bias_frozen or not self.use_bias)

    def kernel_mask(self):
        """Bool array of the kernel's shape, True where the kernel is frozen."""
        if self.fully_frozen:
            return np.ones(self.kernel_shape, dtype=bool)
        mask = np.zeros(self.kernel_shape, dtype=bool)
        front = self._front(mask)
        front[list(self.frozen_rows)] = True
        front[:, list(self.frozen_units)] = True
        return mask

    def bias_mask(self):
        """Bool array of the bias's shape, True where the bias is frozen; shape (0,) without bias."""
        if not self.use_bias:
            return np.zeros((0,), dtype=bool)
        mask = np.full(self.full_bias_shape, self.bias_frozen or self.fully_frozen)
        if self.bias_per_unit:
            mask[self._bias_index(self.frozen_units)] = True
        return mask

    # -- where a piece's entries are in the kernel and the bias ----------------

    def _front(self, kernel):
        """A view of `kernel` with the rows axis first and the units axis second."""
        return np.moveaxis(kernel, (self.row_axis, self.unit_axis), (0, 1))

    def _back(self, block):
        return np.moveaxis(block, (0, 1), (self.row_axis, self.unit_axis))

    def _bias_index(self, cols):
        if not self.bias_per_unit:
            return (slice(None),) * len(self.full_bias_shape)
        index = [slice(None)] * len(self.full_bias_shape)
        index[self.bias_axis] = as_index(cols)
        return tuple(index)

    def piece_shape(self, piece):
        """The shape of a piece's kernel variable."""
        shape = list(self.kernel_shape)
        shape[self.row_axis] = self.in_dim if piece.rows is None else len(piece.rows)
        shape[self.unit_axis] = len(piece.cols)
        return tuple(shape)

    def bias_piece_shape(self, cols):
        """The shape of the bias variable that holds the bias of `cols`."""
        shape = list(self.full_bias_shape)
        if self.bias_per_unit:
            shape[self.bias_axis] = len(cols)
        return tuple(shape)

    def take(self, kernel, piece):
        """The entries of `kernel` (numpy, the whole kernel) that `piece` holds."""
        return np.ascontiguousarray(self._back(self._front(kernel)[_cells(piece)]))

    def put(self, kernel, piece, value):
        """Write a piece's `value` into `kernel` (numpy, the whole kernel) in place."""
        self._front(kernel)[_cells(piece)] = self._front_of_piece(value)

    def _front_of_piece(self, value):
        return np.moveaxis(value, (self.row_axis, self.unit_axis), (0, 1))

    # -- structure ----------------------------------------------------------

    @property
    def blocks(self):
        """The column blocks the pieces add into, joined in this order before reordering."""
        if self.fully_frozen:
            return (tuple(range(self.units)),)
        return tuple(b for b in (self.trainable_units, self.frozen_units) if b)

    @property
    def pieces(self):
        """The kernel blocks, each held in its own variable(s)."""
        pieces = self._uncut_pieces()
        if self.row_cuts is None:
            return pieces
        out = []
        for piece in pieces:
            held = set(range(self.in_dim) if piece.rows is None else piece.rows)
            with_bias = piece.use_bias  # the first cut of a piece carries its bias
            for cut, cut_rows in enumerate(self.row_cuts):
                rows = tuple(r for r in cut_rows if r in held)
                if rows:
                    out.append(dataclasses.replace(piece, rows=rows, use_bias=with_bias, cut=cut))
                    with_bias = False
        return tuple(out)

    def _uncut_pieces(self):
        if self.fully_frozen:
            return (Piece("frozen", None, tuple(range(self.units)), self.use_bias, True, 0),)
        t_cols, f_cols = self.trainable_units, self.frozen_units
        t_rows, f_rows = self.trainable_rows, self.frozen_rows
        f_block = 1  # the trainable columns are never empty here
        out = []
        per_unit = self.bias_per_unit
        if t_rows:
            bias = per_unit and not self.bias_frozen
            out.append(Piece("trainable", None if not f_rows else t_rows, t_cols, bias, False, 0))
        if f_rows:
            bias = per_unit and self.bias_frozen and bool(t_rows)
            out.append(Piece("frozen_rows", None if not t_rows else f_rows, t_cols, bias, True, 0))
        if f_cols:
            out.append(Piece("frozen", None, f_cols, per_unit, True, f_block))
        return tuple(out)

    @property
    def row_blocks(self):
        """The input-row sets the pieces read, each piece all rows or exactly one of these.

        `()` when every piece reads every row; else (trainable rows, frozen rows).
        """
        if self.fully_frozen:
            return ()
        if self.frozen_rows and self.trainable_rows:
            return (self.trainable_rows, self.frozen_rows)
        return ()

    @property
    def bias_role(self):
        """None, or "trainable"/"frozen": the trainable columns' bias held on its own.

        Needed when no piece shares the bias's trainability: `bias: true` with
        no frozen rows, or every row frozen while the bias trains; and for a
        bias without a units axis, which is held on its own whole.
        """
        if self.fully_frozen or not self.use_bias:
            return None
        if not self.bias_per_unit:
            return "frozen" if self.bias_frozen else "trainable"
        if any(p.use_bias and p.cols == self.trainable_units for p in self._uncut_pieces()):
            return None
        return "frozen" if self.bias_frozen else "trainable"

    def piece_masks(self, piece):
        """(kernel mask, bias mask) of the entries that `piece` holds."""
        kernel = np.zeros(self.kernel_shape, dtype=bool)
        bias = np.zeros(self.full_bias_shape, dtype=bool)
        self._front(kernel)[_cells(piece)] = True
        if piece.use_bias:
            bias[self._bias_index(piece.cols)] = True
        return kernel, bias

    @property
    def separate_bias_units(self):
        """The units whose bias the separate bias variable holds (all, for a bias without units axis)."""
        return self.trainable_units if self.bias_per_unit else tuple(range(self.units))

    def bias_only_mask(self):
        """Bias mask of the separate bias variable (all False when there is none)."""
        bias = np.zeros(self.full_bias_shape, dtype=bool)
        if self.bias_role:
            bias[self._bias_index(self.separate_bias_units)] = True
        return bias

    # -- weights --------------------------------------------------------------

    def split_weights(self, kernel, bias=None):
        """Original (kernel, bias) -> (list of [kernel, (bias)] per piece, separate bias or None)."""
        pieces = []
        for piece in self.pieces:
            values = [self.take(kernel, piece)]
            if piece.use_bias:
                values.append(np.ascontiguousarray(bias[self._bias_index(piece.cols)]))
            pieces.append(values)
        separate = np.ascontiguousarray(bias[self._bias_index(self.separate_bias_units)]) if self.bias_role else None
        return pieces, separate

    def merge_weights(self, pieces, separate, dtype):
        """Inverse of `split_weights`: -> [kernel] or [kernel, bias]."""
        kernel = np.empty(self.kernel_shape, dtype=dtype)
        bias = np.empty(self.full_bias_shape, dtype=dtype) if self.use_bias else None
        for piece, values in zip(self.pieces, pieces):
            self.put(kernel, piece, values[0])
            if piece.use_bias:
                bias[self._bias_index(piece.cols)] = values[1]
        if self.bias_role:
            bias[self._bias_index(self.separate_bias_units)] = separate
        return [kernel] if bias is None else [kernel, bias]

    # -- order restoring ----------------------------------------------------

    # -- serialization ------------------------------------------------------

    def transposed(self):
        """The same split seen from the other side: rows become units and units rows.

        A tied embedding table used as an output layer (`reverse=True`) is the
        table's transpose, and a separate reverse kernel (vocab as units) is
        split like it. The shape is (units, in_dim); there is no bias.
        """
        return KernelPlan(
            in_dim=self.units,
            units=self.in_dim,
            use_bias=False,
            frozen_units=self.frozen_rows,
            frozen_rows=self.frozen_units,
            bias_frozen=False,
            grown_from=None if self.grown_from is None else self.grown_from[::-1],
        )

    def get_config(self):
        config = {
            "in_dim": self.in_dim,
            "units": self.units,
            "use_bias": self.use_bias,
            "frozen_units": [list(r) for r in runs(self.frozen_units)],
            "frozen_rows": [list(r) for r in runs(self.frozen_rows)],
            "bias_frozen": self.bias_frozen,
        }
        if self.shape is not None:
            config.update(shape=list(self.shape), row_axis=self.row_axis, unit_axis=self.unit_axis)
        if self.bias_shape is not None or self.bias_axis != 0:
            config.update(bias_shape=None if self.bias_shape is None else list(self.bias_shape), bias_axis=self.bias_axis)
        if self.grown_from is not None:
            config["grown_from"] = list(self.grown_from)
        if self.row_cuts is not None:
            config["row_cuts"] = [[list(r) for r in runs(cut)] for cut in self.row_cuts]
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("frozen_units", "frozen_rows"):
            config[key] = from_runs(config.get(key, ()))
        for key in ("shape", "bias_shape", "grown_from"):
            if config.get(key) is not None:
                config[key] = tuple(config[key])
        if config.get("row_cuts") is not None:
            config["row_cuts"] = tuple(from_runs(cut) for cut in config["row_cuts"])
        return cls(**config)


def join_order(blocks, size):
    """How to lay joined blocks out in the original order.

    Args:
        blocks: Disjoint sorted index tuples covering `range(size)`.
        size: The number of indices.

    Returns:
        `(segments, perm)`: `segments` lists `(block, start, stop)` slices
        whose concatenation is the original order; `perm[j]` is the position
        of index `j` in `concat(blocks)`.

    Example:
        >>> join_order(((0, 1, 3), (2,)), 4)
        ([(0, 0, 2), (1, 0, 1), (0, 2, 3)], [0, 1, 3, 2])
    """
    position, offset = {}, 0
    for block, cols in enumerate(blocks):
        for i, j in enumerate(cols):
            position[j] = (block, i, offset + i)
        offset += len(cols)
    segments = []
    for j in range(size):
        block, i, _ = position[j]
        if segments and segments[-1][0] == block and segments[-1][2] == i:
            segments[-1][2] = i + 1
        else:
            segments.append([block, i, i + 1])
    perm = [position[j][2] for j in range(size)]
    return [tuple(s) for s in segments], perm
