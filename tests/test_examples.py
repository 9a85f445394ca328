"""scripts/incremental_digits.py, the README's growth example on real data, in its quick mode."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("incremental_digits", ROOT / "scripts" / "incremental_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_incremental_digits_quick(capsys):
    rows = _script().main(["--quick"])
    table = capsys.readouterr().out
    assert len([line for line in table.splitlines() if line.startswith("|")]) == 2 + 7  # header, rule, base, 6 variants
    assert [r["setting"] for r in rows[1:]] == [n for n, _, _ in _script().VARIANTS for _ in (0, 1)]
    assert rows[0]["old"] > 0.5  # the base learned digits 0-4 even in a few epochs
    for row in rows[1:]:
        assert 0.0 <= row["old"] <= 1.0 and 0.0 <= row["new"] <= 1.0
        assert row["changed"] == 0  # every frozen entry bit-identical to the base's
    naive, frozen, trunk = rows[1], rows[3], rows[5]
    assert naive["frozen"] == 0 and frozen["frozen"] == 64 * 5 + 5
    assert trunk["frozen"] == 64 * 5 + 5 + 64 * 64 + 64 + 64 * 64 + 64
    assert trunk["logits_kept"] and rows[6]["logits_kept"]  # trunk and old units frozen: old logits exact
