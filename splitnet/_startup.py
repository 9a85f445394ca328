"""Hide TensorFlow's C++ start-up chatter when splitnet runs as the `splitnet` command.

The command imports this package (and so TensorFlow) before any of its own
code runs, and TensorFlow's CUDA probe writes to file descriptor 2 below
Python's reach, whatever `TF_CPP_MIN_LOG_LEVEL` says. Only for the command,
and only during the import, that output is captured; it is shown if the
import fails. Python users importing splitnet see TensorFlow as usual.
"""

import os
import sys
import tempfile


def quiet_tensorflow_import():
    if "tensorflow" in sys.modules or os.path.basename(sys.argv[0] if sys.argv else "") != "splitnet":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401 - imported for its side effect, quietly
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
