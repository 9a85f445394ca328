"""README code blocks marked as runnable run as written, in a fresh interpreter and folder."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- runs as written: tests/test_readme.py -->"


def marked_blocks():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    pattern = re.escape(MARK) + r"\s*```python\n(.*?)```"
    return re.findall(pattern, text, flags=re.S)


BLOCKS = marked_blocks()


def test_marked_blocks_are_found():
    assert BLOCKS, f"no README block is marked {MARK!r}"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_block_runs(code, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # A comment at the end of a print line says what it prints.
    for line in code.splitlines():
        if line.startswith("print(") and "#" in line:
            expected = line.split("#", 1)[1].strip()
            assert expected in result.stdout, (expected, result.stdout)
