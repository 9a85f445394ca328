"""The benchmark script runs (tiny sizes), so it cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--rounds", "2", "--steps", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| scenario | unsplit ms | mask ms | split ms |" in result.stdout
    report = json.loads(out.read_text())
    for row in report["steps"]:
        assert row["split_frozen_changed"] == 0
        assert row["mask_frozen_changed"] > 0  # weight decay moves the masked entries
        opt = row["optimizer_bytes"]
        # The split model's optimizer holds state for the trainable entries only.
        trainable_fraction = 1 - row["frozen_entries"] / (opt["unsplit"] / 8)
        assert opt["split"] == round(opt["unsplit"] * trainable_fraction)
        assert opt["in_place"] == opt["split"]  # both forms keep state for the same entries
        assert opt["mask"] == opt["unsplit"]
    assert report["merge"]["merged_over_unsplit_predict"] > 0
    # The layer kinds: frozen entries exact, the mask recipe's moved, optimizer state the trainable fraction.
    assert {row["scenario"].split()[0] for row in report["kinds"]} == {"Embedding", "Tied", "Conv2D", "MultiHeadAttention"}
    for row in report["kinds"]:
        assert row["split_frozen_changed"] == 0 and row["mask_frozen_changed"] > 0, row["scenario"]
        opt = row["optimizer_bytes"]
        trainable = opt["unsplit"] / 8 - row["frozen_entries"]  # Adam: 2 floats per trainable entry
        assert opt["split"] == opt["in_place"] == 8 * trainable, row["scenario"]
        assert row["merged_over_unsplit_predict"] > 0
    assert "| scenario | unsplit ms | split/unsplit | mask/unsplit | other recipe |" in result.stdout
    assert {row["scenario"].split()[0]: row["form"] for row in report["kinds"]} == {
        "Embedding": "functional", "Tied": "in place", "Conv2D": "functional", "MultiHeadAttention": "in place"
    }
    # A grown model: fewer optimizer floats than the grown model trained whole.
    grown = report["grown"]
    assert grown["optimizer_bytes"]["split"] == grown["optimizer_bytes"]["in_place"] < grown["optimizer_bytes"]["unsplit"]
