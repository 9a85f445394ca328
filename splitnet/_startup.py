"""What differs when splitnet runs as the `splitnet` command.

The command should answer `--help`, `--version` and usage errors without
importing TensorFlow (seconds and hundreds of megabytes), so the package
imports its modules lazily there, and the commands import them when they
run. And TensorFlow's C++ start-up chatter (its CUDA probe writes to file
descriptor 2, below Python's reach, whatever `TF_CPP_MIN_LOG_LEVEL` says) is
captured during that import and shown only if the import fails. Python users
importing splitnet get everything at once and see TensorFlow as usual.
"""

import os
import signal
import sys
import tempfile
import threading


def invoked_as_command():
    """Whether this process is the `splitnet` console script."""
    return os.path.basename(sys.argv[0] if sys.argv else "") == "splitnet"


def quiet_tensorflow_import():
    """Import TensorFlow with its start-up output captured (for the command only)."""
    if "tensorflow" in sys.modules or not invoked_as_command():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401 - imported for its side effect, quietly
        except Exception:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class HeldCtrlC:
    """A context that holds a Ctrl-C arriving in it and raises it when it ends.

    Python raises KeyboardInterrupt wherever the main thread is; inside a
    compiled module's import or TensorFlow's own code it can turn into
    another error, or be swallowed. Held, it is raised at a safe point: when
    the block ends, or earlier where the code checks `pressed` (training
    checks between batches). Nothing changes where Ctrl-C is not Python's
    default (ignored in a background job, or handled by someone else).

    Args:
        kill_on_second: A second Ctrl-C ends the process at once, by the
            signal itself, as Ctrl-C does without Python.
    """

    def __init__(self, kill_on_second=False):
        self.kill_on_second = kill_on_second
        self.pressed = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, signum, frame):
        if self.pressed and self.kill_on_second:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        self.pressed = True

    def __exit__(self, kind, value, traceback):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if kind is None and self.pressed:
            raise KeyboardInterrupt
        return False
