"""README.md, followed as a user would: every block, in order, in one fresh folder.

Shell blocks run line by line (installs and the test command excepted: CI runs
those, and this test checks that `.ci/run` runs what the README says). Python
blocks run in a fresh interpreter. A YAML block that names a file in its first
line (`# finetune.yaml ...`) is written there, or, if the repository has that
file, must equal it. A sample output, marked `<!-- output of: COMMAND -->`, must
be what COMMAND printed when it ran earlier in the README: line by line, in
order (other lines, such as Keras' progress bar, may come between), numbers
with the digits printed and to 2e-4 relative, and run-folder times aside. So the README cannot drift.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
BLOCK = re.compile(r"(?:<!-- (output of|example, not run here): (.*?) -->\n)?```(\w*)\n(.*?)```", re.S)
NUMBER = re.compile(r"(-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?)")
RUN_TIME = re.compile(r"(runs/[\w.-]+?)-\d{8}-\d{6}(?:-\d+)?")


def readme_blocks():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [
        {"line": text[: m.start()].count("\n") + 1, "mark": m.group(1), "note": m.group(2), "lang": m.group(3), "text": m.group(4)}
        for m in BLOCK.finditer(text)
    ]


BLOCKS = readme_blocks()


@pytest.fixture(scope="module")
def user():
    """A user's folder: a copy of the shipped examples, and the outputs of the commands run so far."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="readme-") as folder:
        folder = Path(folder)
        shutil.copytree(ROOT / "configs", folder / "configs")
        yield {"dir": folder, "outputs": {}}


def _command_key(line):
    return " ".join(line.split("#", 1)[0].split())


def run_shell(block, user):
    ci = (ROOT / ".ci" / "run").read_text()
    for line in block["text"].splitlines():
        for command in (_command_key(part) for part in _command_key(line).split("&&")):
            if not command:
                continue
            if command.startswith("python -m pip install") or command.startswith("python -m pytest"):
                if "[test]" in command or "pytest" in command:
                    assert command in ci, f"README says `{command}`, .ci/run does not run it"
                continue
            result = subprocess.run(command, shell=True, cwd=user["dir"], env=ENV, capture_output=True, text=True, timeout=600)
            expected_failure = command.startswith("splitnet verify") and result.stdout.startswith("FAILED:")
            assert result.returncode == 0 or expected_failure, f"`{command}` failed:\n{result.stderr[-3000:]}"
            user["outputs"][command] = result.stdout


def run_python(block, user):
    code = block["text"]
    result = subprocess.run([sys.executable, "-c", code], cwd=user["dir"], env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in code.splitlines():  # a comment after a print says what it prints
        if line.startswith("print(") and "#" in line:
            expected = line.split("#", 1)[1].strip()
            assert expected in result.stdout, (expected, result.stdout)


def place_yaml(block, user):
    first = block["text"].splitlines()[0]
    assert first.startswith("# "), f"README.md:{block['line']}: a YAML block starts with `# FILE`"
    name = first[2:].split()[0].rstrip(":")
    if (ROOT / name).exists():
        assert (ROOT / name).read_text() == block["text"], f"README.md:{block['line']} differs from {name}"
    else:
        (user["dir"] / name).write_text(block["text"])


def _tokens(line):
    return NUMBER.split(RUN_TIME.sub(r"\1-<time>", line.rstrip()))


def _digits(number):
    """The shape of a number's text: digits after the point, and the exponent's presence."""
    mantissa = number.split("e")[0]
    return (len(mantissa.split(".")[1]) if "." in mantissa else 0, "e" in number)


def _same_line(sample, actual):
    a, b = _tokens(sample), _tokens(actual)
    if len(a) != len(b):
        return False
    for i, (x, y) in enumerate(zip(a, b)):
        if i % 2 == 0 or x == y:  # text between numbers must match exactly
            if x != y:
                return False
            continue
        if not any(c in x + y for c in ".e") or _digits(x) != _digits(y):
            return False  # counts are exact, and a value is shown with as many digits as printed
        u, v = float(x.replace(",", "")), float(y.replace(",", ""))
        if abs(u - v) > 2e-4 * max(1.0, abs(u)):
            return False
    return True


def check_sample(block, user):
    command = _command_key(block["note"])
    assert command in user["outputs"], f"README.md:{block['line']}: `{command}` is not run before its output"
    actual = user["outputs"][command].splitlines()
    position = 0
    for line in block["text"].splitlines():
        for i in range(position, len(actual)):
            if _same_line(line, actual[i]):
                position = i + 1
                break
        else:
            pytest.fail(f"README.md:{block['line']}: `{command}` did not print\n  {line}\nit printed:\n" + "\n".join(actual))


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b['line']}-{b['lang'] or 'output'}" for b in BLOCKS])
def test_readme_block(block, user):
    if block["lang"] == "sh":
        run_shell(block, user)
    elif block["lang"] == "python":
        run_python(block, user)
    elif block["lang"] == "yaml":
        place_yaml(block, user)
    elif block["mark"] == "output of":
        check_sample(block, user)
    else:
        assert block["mark"], f"README.md:{block['line']}: a block without a language needs an `output of:` or `example, not run here:` mark"
        assert block["lang"] == ""


def test_every_kind_of_block_is_covered():
    kinds = {b["lang"] or b["mark"] for b in BLOCKS}
    assert {"sh", "python", "yaml", "output of"} <= kinds
