"""What differs when splitnet runs as the `splitnet` command.

The command should answer `--help`, `--version` and usage errors without
importing TensorFlow (seconds and hundreds of megabytes), so the package
imports its modules lazily there, and the commands import them when they
run. And TensorFlow's C++ start-up chatter (its CUDA probe writes to file
descriptor 2, below Python's reach, whatever `TF_CPP_MIN_LOG_LEVEL` says) is
captured during that import and shown only if the import fails. Python users
importing splitnet get everything at once and see TensorFlow as usual.
"""

import contextlib
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


@contextlib.contextmanager
def ctrl_c_afterwards():
    """Hold a Ctrl-C that arrives in the block and raise it when the block ends.

    A KeyboardInterrupt raised while a compiled module is being imported can
    turn into an ImportError, or be swallowed by an optional import, so the
    import finishes first. Nothing changes where Ctrl-C is not Python's
    default (ignored in a background job, or handled by someone else).
    """
    pressed = []
    previous = None
    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt
