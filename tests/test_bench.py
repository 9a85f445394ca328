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
        assert opt["mask"] == opt["unsplit"]
    assert report["merge"]["merged_over_unsplit_predict"] > 0
