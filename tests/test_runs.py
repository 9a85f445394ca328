"""The life of a run: what it trains on, where it writes, and what an interruption leaves.

Real processes where it matters (two runs at once, Ctrl-C, start-up cost);
click's runner elsewhere.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import splitnet
from splitnet import job
from splitnet.cli import main
from splitnet.files import OutputError, atomic_output, claimed_folder, read_settings

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SPLITNET = shutil.which("splitnet")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def spec_with_data(tmp_path):
    """The quickstart spec with its own data file and train settings."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "xy.npz", x=rng.normal(size=(96, 32)).astype("float32"), y=rng.integers(0, 10, 96))
    text = QUICKSTART.read_text().split("train:")[0]
    text += "train:\n  data: xy.npz\n  loss: sparse_categorical_crossentropy\n  epochs: 2\n  batch_size: 32\n"
    (tmp_path / "spec.yaml").write_text(text)
    return tmp_path / "spec.yaml"


# -- build, then train: the spec's settings are used, and said ---------------------------------


def test_a_built_model_trains_with_its_specs_settings(spec_with_data, tmp_path):
    assert invoke("build", spec_with_data, "-o", tmp_path / "b.keras").exit_code == 0
    result = invoke("train", tmp_path / "b.keras", "-o", tmp_path / "t.keras")
    assert result.exit_code == 0, result.output
    data = (tmp_path / "xy.npz").resolve()
    assert f"training on {data}: x (96, 32) float32, y (96,) int64; 2 epochs, batch size 32" in result.output
    assert "Epoch 2/2" in result.output and "Epoch 3/" not in result.output
    assert "3/3" in result.output  # 96 samples at batch 32: three steps per epoch

    # The trained model carries the same settings on; options override them.
    again = invoke("train", tmp_path / "t.keras", "--epochs", "1", "-o", tmp_path / "t2.keras")
    assert f"training on {data}: x (96, 32) float32, y (96,) int64; 1 epoch, batch size 32" in again.output


def test_train_says_when_it_uses_the_synthetic_task(tmp_path):
    assert invoke("build", QUICKSTART, "-o", tmp_path / "b.keras").exit_code == 0
    result = invoke("train", tmp_path / "b.keras", "--epochs", "1", "-o", tmp_path / "t.keras")
    assert "training on the synthetic task (seed 0): x (1792, 32) float32, y (1792,) int64; validation: 256 samples" in result.output


def test_the_specs_data_gone_is_a_clear_error(spec_with_data, tmp_path):
    invoke("build", spec_with_data, "-o", tmp_path / "b.keras")
    (tmp_path / "xy.npz").unlink()
    result = invoke("train", tmp_path / "b.keras", "-o", tmp_path / "t.keras")
    assert result.exit_code == 2
    assert f"trains on {(tmp_path / 'xy.npz').resolve()} (from its spec), which does not exist there nor where it was when the model was saved; give --data" in result.stderr


def test_run_says_what_it_trains_on(spec_with_data, tmp_path):
    result = invoke("run", spec_with_data, "-o", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"training on {spec_with_data.parent / 'xy.npz'}: x (96, 32) float32")
    # Its split model trains on the same data.
    again = invoke("train", tmp_path / "run" / "split.keras", "-o", tmp_path / "t.keras")
    assert f"training on {(tmp_path / 'xy.npz').resolve()}: x (96, 32)" in again.output


# -- output folders ---------------------------------------------------------------------------


def test_default_run_folders_are_unique(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(job, "default_run_dir", lambda spec: Path("runs") / "quickstart-20261127-085238")
    first = job.run_spec(QUICKSTART, epochs=1, verbose=0)
    second = job.run_spec(QUICKSTART, epochs=1, verbose=0)
    assert (first["output"], second["output"]) == ("runs/quickstart-20261127-085238", "runs/quickstart-20261127-085238-2")
    for report in (first, second):
        assert sorted(p.name for p in Path(report["output"]).iterdir()) == ["report.json", "saved_model", "spec.yaml", "split.keras"]


def test_two_runs_started_together_both_finish(tmp_path):
    """The real thing: two processes, the same second, the same default name."""
    shutil.copy(QUICKSTART, tmp_path / "quickstart.yaml")
    children = [
        subprocess.Popen(
            [SPLITNET, "run", "quickstart.yaml", "--epochs", "1"], cwd=tmp_path, env=ENV,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=300) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["report.json", "saved_model", "spec.yaml", "split.keras"]


def test_a_taken_output_folder_is_refused_before_any_work(tmp_path):
    with claimed_folder(tmp_path / "run"):  # another job's claim
        with pytest.raises(OutputError, match="already exists"):
            with claimed_folder(tmp_path / "run"):
                pass
        result = invoke("run", QUICKSTART, "-o", tmp_path / "run")
        assert result.exit_code == 2 and "Epoch" not in result.output
    assert (tmp_path / "run").is_dir()  # the other job's claim is left alone
    with pytest.raises(RuntimeError):
        with claimed_folder(tmp_path / "mine"):
            raise RuntimeError("the job failed")
    assert not (tmp_path / "mine").exists()  # an empty claim is given back when its job fails


def test_a_run_over_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("precious")
    with pytest.raises(OutputError, match="afile exists and is not a folder; a run writes a folder"):
        job.run_spec(QUICKSTART, tmp_path / "afile", force=True, verbose=0)
    assert (tmp_path / "afile").read_text() == "precious"


def test_an_output_created_meanwhile_is_kept(tmp_path):
    target = tmp_path / "out.keras"
    with pytest.raises(OutputError, match="was created by someone else meanwhile"):
        with atomic_output(target) as tmp:
            tmp.write_text("ours")
            target.write_text("theirs")
    assert target.read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.keras"]


# -- interruptions: checkpoints and resuming ------------------------------------------------


def _interrupt_after_checkpoint(args, checkpoint, cwd):
    """Start `splitnet ARGS`, wait for its checkpoint of epoch 2, press Ctrl-C; return (code, stderr)."""
    child = subprocess.Popen(
        [SPLITNET, *map(str, args)], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # A process started in the background inherits SIGINT ignored; Ctrl-C needs it back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline and _epochs_in(checkpoint) < 2:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    return child.returncode, err


def _epochs_in(checkpoint):
    try:
        return read_settings(checkpoint)["completed_epochs"]
    except (OSError, KeyError, TypeError, zipfile.BadZipFile):
        return 0


def _completed(message):
    return int(re.search(r"the model after epoch (\d+) of", message).group(1))


def test_an_interrupted_run_keeps_a_checkpoint_that_train_resumes(tmp_path):
    out = tmp_path / "run"
    code, err = _interrupt_after_checkpoint(["run", QUICKSTART, "-o", out, "--epochs", "1000"], out / "checkpoint.keras", tmp_path)
    assert code == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("splitnet: interrupted; the model after epoch "), err
    assert f"of 1000 is in {out / 'checkpoint.keras'}; resume with `splitnet train {out / 'checkpoint.keras'} -o trained.keras`" in lines[0]
    assert [p.name for p in out.iterdir()] == ["checkpoint.keras"]  # nothing else, nothing half-written
    done = _completed(lines[0])

    result = invoke("train", out / "checkpoint.keras", "--epochs", done + 2, "-o", tmp_path / "t.keras")
    assert result.exit_code == 0, result.output
    assert f"; epochs {done + 1}-{done + 2} of {done + 2}, batch size 64" in result.output
    assert f"Epoch {done + 2}/{done + 2}" in result.output and f"Epoch {done}/" not in result.output
    assert not (tmp_path / "t.checkpoint.keras").exists()  # removed once training ended well
    verified = invoke("verify", out / "checkpoint.keras", tmp_path / "t.keras")
    assert verified.output.startswith("OK: all 683 frozen entries are bit-identical")

    # At its own epoch count a checkpoint has nothing left to train: it is saved as it is.
    finished = invoke("train", out / "checkpoint.keras", "--epochs", done, "-o", tmp_path / "u.keras")
    assert finished.exit_code == 0 and f"nothing left to train: {out / 'checkpoint.keras'} has completed all {done} epoch" in finished.output
    assert invoke("verify", out / "checkpoint.keras", tmp_path / "u.keras").output.startswith("OK: all 683 frozen entries are bit-identical; 0 of")
    fewer = invoke("train", out / "checkpoint.keras", "--epochs", 1, "-o", tmp_path / "v.keras")
    assert fewer.exit_code == 2 and f"has completed {done} epochs; --epochs 1 is fewer" in fewer.stderr


def test_an_interrupted_train_keeps_its_checkpoint_beside_the_output(tmp_path):
    checkpoint = tmp_path / "t.checkpoint.keras"
    code, err = _interrupt_after_checkpoint(["train", QUICKSTART, "--epochs", "1000", "-o", "t.keras"], checkpoint, tmp_path)
    assert code == 130 and "resume with `splitnet train t.checkpoint.keras -o t.keras`" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.checkpoint.keras"]
    done = _completed(err)

    # Starting afresh would overwrite it: refused, with the way to resume.
    fresh = invoke("train", QUICKSTART, "-o", tmp_path / "t.keras")
    assert fresh.exit_code == 2 and "t.checkpoint.keras exists (a stopped run's checkpoint)" in fresh.stderr
    resumed = invoke("train", checkpoint, "--epochs", done + 1, "-o", tmp_path / "t.keras")
    assert resumed.exit_code == 0, resumed.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.keras"]


def test_a_diverging_run_names_its_last_good_epoch(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "xy.npz", x=rng.normal(size=(256, 32)).astype("float32"), y=rng.integers(0, 10, 256))
    result = invoke("run", QUICKSTART, "--data", tmp_path / "xy.npz", "--learning-rate", "1e35", "-o", tmp_path / "run")
    assert result.exit_code == 1
    assert "TrainingDiverged: the loss became nan in epoch 1" in result.stderr
    assert not (tmp_path / "run").exists()  # no epoch finished: nothing to keep


# -- the command starts fast ------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["train", "--help"], ["train"], ["bogus"]])
def test_help_version_and_usage_errors_do_not_import_tensorflow(args):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", SPLITNET, *args], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert result.returncode in (0, 2), result.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "splitnet" in imported and "click" in imported
    assert not imported & {"tensorflow", "keras", "numpy", "yaml"}


# -- the data a model trains on, when files move ---------------------------------------------


def test_moved_data_can_be_given_and_inspect_needs_none(spec_with_data, tmp_path):
    invoke("build", spec_with_data, "-o", tmp_path / "b.keras")
    (tmp_path / "xy.npz").rename(tmp_path / "moved.npz")
    assert invoke("inspect", tmp_path / "b.keras").exit_code == 0
    result = invoke("train", tmp_path / "b.keras", "--data", tmp_path / "moved.npz", "-o", tmp_path / "t.keras")
    assert result.exit_code == 0, result.stderr
    assert f"training on {tmp_path / 'moved.npz'}: x (96, 32)" in result.output


def test_a_project_folder_moves_as_a_whole(spec_with_data, tmp_path):
    invoke("build", spec_with_data, "-o", tmp_path / "b.keras")
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)
    try:
        result = invoke("train", moved / "b.keras", "-o", moved / "t.keras")
        assert result.exit_code == 0, result.stderr
        assert f"training on {moved / 'xy.npz'}: x (96, 32)" in result.output
    finally:
        moved.rename(tmp_path)


def test_a_spec_whose_data_is_missing_is_refused_at_build(spec_with_data, tmp_path):
    (tmp_path / "xy.npz").unlink()
    result = invoke("build", spec_with_data, "-o", tmp_path / "b.keras")
    assert result.exit_code == 2
    line = spec_with_data.read_text().splitlines().index("  data: xy.npz") + 1
    assert f"{spec_with_data}:{line}: train.data: {tmp_path / 'xy.npz'}: file not found" in result.stderr


# -- stops after training, and Ctrl-C inside TensorFlow --------------------------------------


def test_a_run_stopped_after_its_last_epoch_can_still_be_saved(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "export_saved_model", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        job.run_spec(QUICKSTART, tmp_path / "run", epochs=2, verbose=0)
    checkpoint = tmp_path / "run" / "checkpoint.keras"
    assert info.value.resume_hint == (
        f"the model after epoch 2 of 2 is in {checkpoint}; "
        f"all epochs are done; save it with `splitnet train {checkpoint} -o trained.keras`"
    )
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoint.keras"]
    lines = []
    job.train_file(checkpoint, tmp_path / "trained.keras", echo=lines.append)
    assert lines == [f"nothing left to train: {checkpoint} has completed all 2 epochs"]
    assert splitnet.verify(splitnet.load_model(checkpoint), splitnet.load_model(tmp_path / "trained.keras")).changed == 0


def test_ctrl_c_stops_training_between_batches():
    import keras

    from splitnet.callbacks import InterruptAtBatchEnd

    class PressCtrlC(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 2:
                os.kill(os.getpid(), signal.SIGINT)  # arrives inside TensorFlow's step

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", "mse")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            with InterruptAtBatchEnd() as interrupt:
                model.fit(np.zeros((64, 4)), np.zeros(64), batch_size=8, epochs=3, verbose=0, callbacks=[PressCtrlC(), interrupt])
        assert int(model.optimizer.iterations) == 3  # the step under way finished, no other began
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # and the handler is back
    finally:
        signal.signal(signal.SIGINT, previous)


# -- one output, one job ----------------------------------------------------------------------


def test_an_output_held_by_another_train_is_refused_before_any_work(tmp_path):
    from splitnet.files import _started

    lock = tmp_path / ".same.keras.lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock.write_text(f"{other.pid} {_started(other.pid)}")  # as a live `splitnet train` writes it
        result = invoke("train", QUICKSTART, "-o", tmp_path / "same.keras")
        assert result.exit_code == 2 and "Epoch" not in result.output
        assert f"same.keras is being written by another process (pid {other.pid}, lock {lock})" in result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == [".same.keras.lock"]
        # The same id with another start time is a later process: the lock is stale.
        lock.write_text(f"{other.pid} 1")
        result = invoke("train", QUICKSTART, "--epochs", 1, "-o", tmp_path / "same.keras")
        assert result.exit_code == 0, result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["same.keras"]
    finally:
        other.kill()
        other.wait()
    # So is one left by a process that is gone, or by an earlier life of this process id
    # (a restarted container).
    for pid in (other.pid, os.getpid()):
        lock.write_text(str(pid))
        result = invoke("train", QUICKSTART, "--epochs", 1, "-o", tmp_path / "same.keras", "--force")
        assert result.exit_code == 0, result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["same.keras"]


def test_a_run_stopped_after_its_results_are_in_place_points_to_no_checkpoint(tmp_path, monkeypatch):
    from splitnet import files

    real_remove, calls = files._remove, []

    def remove_then_interrupt(path):  # Ctrl-C while the old, claimed folder is being removed
        real_remove(path)
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(files, "_remove", remove_then_interrupt)
    with pytest.raises(KeyboardInterrupt) as info:
        job.run_spec(QUICKSTART, tmp_path / "run", epochs=1, verbose=0)
    assert info.value.resume_hint == ""  # its checkpoint went with the claimed folder
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["report.json", "saved_model", "spec.yaml", "split.keras"]


def _start(args, cwd):
    return subprocess.Popen(
        [SPLITNET, *map(str, args)], cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize("delay", [0.3, 1.0])
def test_ctrl_c_while_tensorflow_loads_is_one_line(tmp_path, delay):
    child = _start(["train", QUICKSTART, "--epochs", 1000, "-o", "t.keras"], tmp_path)
    time.sleep(delay)  # the command is importing TensorFlow
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert err.strip().splitlines()[0].startswith("splitnet: interrupted") and len(err.strip().splitlines()) == 1, err


def test_ctrl_c_after_the_command_has_finished_changes_nothing(tmp_path):
    child = _start(["inspect", QUICKSTART], tmp_path)
    for line in child.stdout:
        if line.startswith("optimizer state saved"):  # the last line: the command is done
            child.send_signal(signal.SIGINT)  # TensorFlow is still shutting down
            break
    child.communicate(timeout=60)
    assert child.returncode == 0


PRESS_TWICE = """
import os, signal, keras, numpy as np
from splitnet.callbacks import InterruptAtBatchEnd

class PressTwice(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if batch == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

inputs = keras.Input((4,))
model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
model.compile("sgd", "mse")
with InterruptAtBatchEnd() as interrupt:
    model.fit(np.zeros((64, 4)), np.zeros(64), batch_size=8, epochs=3, verbose=0, callbacks=[PressTwice(), interrupt])
print("not reached")
"""


def test_ctrl_c_twice_ends_the_process_at_once(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", PRESS_TWICE], capture_output=True, text=True, env=ENV, timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert result.returncode == -signal.SIGINT, result.stderr[-2000:]  # killed by the signal, as without Python
    assert "not reached" not in result.stdout
