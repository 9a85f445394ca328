"""The index plan: resolution, pieces, and split/merge of weights as exact inverses."""

import itertools

import numpy as np
import pytest

from splitnet import SpecError
from splitnet.plan import KernelPlan, join_order, resolve, runs
from splitnet.spec import Where, parse_index_set


def _resolve(value, size=10):
    return resolve(parse_index_set(value, ("units",), Where()), size, "units", "d", Where())


@pytest.mark.parametrize(
    "value, expected",
    [
        (3, (3,)),
        (-1, (9,)),
        ("2:5", (2, 3, 4)),
        (":2", (0, 1)),
        ("8:", (8, 9)),
        ("-3:", (7, 8, 9)),
        ("-3:-1", (7, 8)),
        (":", tuple(range(10))),
        ("0:10", tuple(range(10))),
        ("all", tuple(range(10))),
        ([5, "0:2", -1], (0, 1, 5, 9)),
    ],
)
def test_resolve(value, expected):
    assert _resolve(value) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        (10, "units: 10 is out of range, layer 'd' has 10 units"),
        (-11, "-11 is out of range"),
        ("0:11", "range '0:11': 11 is out of range"),
        ("-11:", "range '-11:': -11 is out of range"),
        ("5:2", "range '5:2' is reversed (5 > 2)"),
        ("-2:3", "range '-2:3' is reversed (8 > 3)"),
        ("4:4", "range '4:4' is empty"),
        ([1, 1], "units[1]: '1' is listed twice"),
        (["0:5", "4:6"], "units[1]: '4:6' overlaps '0:5' (both include 4)"),
    ],
)
def test_resolve_errors(value, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        _resolve(value)


def test_runs():
    assert runs([]) == []
    assert runs([0, 1, 2, 5, 7, 8]) == [(0, 3), (5, 6), (7, 9)]


def _plans():
    in_dim, units = 5, 6
    unit_sets = [(), (0,), (1, 2), (0, 2, 4, 5), tuple(range(units))]
    row_sets = [(), (0,), (1, 3), tuple(range(in_dim))]
    for fu, fr, bias, use_bias in itertools.product(unit_sets, row_sets, (False, True), (False, True)):
        if not fu and not fr and not bias:
            continue
        yield KernelPlan(in_dim, units, use_bias, fu, fr, bias and use_bias)


def _ids(plan):
    return f"u{plan.frozen_units}-r{plan.frozen_rows}-b{int(plan.bias_frozen)}{int(plan.use_bias)}"


@pytest.mark.parametrize("plan", list(_plans()), ids=_ids)
def test_split_and_merge_are_inverse_and_cover_each_entry_once(plan):
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(plan.in_dim, plan.units)).astype("float32")
    bias = rng.normal(size=(plan.units,)).astype("float32") if plan.use_bias else None
    pieces, separate = plan.split_weights(kernel, bias)
    merged = plan.merge_weights(pieces, separate, "float32")
    np.testing.assert_array_equal(merged[0], kernel)
    if plan.use_bias:
        np.testing.assert_array_equal(merged[1], bias)
    # Every kernel entry lives in exactly one piece, frozen pieces hold exactly the frozen ones.
    counts = np.zeros(kernel.shape, int)
    frozen = np.zeros(kernel.shape, bool)
    for piece in plan.pieces:
        rows = range(plan.in_dim) if piece.rows is None else piece.rows
        for i, j in itertools.product(rows, piece.cols):
            counts[i, j] += 1
            frozen[i, j] = piece.frozen
        assert piece.rows is None or piece.rows in plan.row_blocks
        assert set(piece.cols) <= set(plan.blocks[piece.block])
    assert (counts == 1).all()
    np.testing.assert_array_equal(frozen, plan.kernel_mask())
    # The bias goes to one holder per column, frozen as the mask says.
    if plan.use_bias:
        holder = {}
        for piece in plan.pieces:
            if piece.use_bias:
                assert not set(piece.cols) & set(holder), "a bias entry held twice"
                holder.update({j: piece.frozen for j in piece.cols})
        if plan.bias_role:
            holder.update({j: plan.bias_role == "frozen" for j in plan.trainable_units})
        assert sorted(holder) == list(range(plan.units))
        np.testing.assert_array_equal([holder[j] for j in range(plan.units)], plan.bias_mask())


@pytest.mark.parametrize("frozen", [(0,), (5,), (1, 2), (0, 2, 4, 5), (0, 1, 3, 4)])
def test_join_order_restores_columns(frozen):
    plan = KernelPlan(3, 6, True, frozen, (), False)
    segments, perm = join_order(plan.blocks, plan.units)
    columns = np.arange(6)
    blocks = [columns[list(cols)] for cols in plan.blocks]
    by_segments = np.concatenate([blocks[b][s:e] for b, s, e in segments])
    np.testing.assert_array_equal(by_segments, columns)
    np.testing.assert_array_equal(np.concatenate(blocks)[perm], columns)
    # Adjacent segments never come from the same block contiguously (they would have merged).
    for (b1, _, e1), (b2, s2, _) in zip(segments, segments[1:]):
        assert not (b1 == b2 and e1 == s2)


def test_config_round_trip():
    plan = KernelPlan(7, 9, True, (0, 1, 2, 5, 8), (3, 4), True)
    assert KernelPlan.from_config(plan.get_config()) == plan
    assert plan.get_config()["frozen_units"] == [[0, 3], [5, 6], [8, 9]]
