"""Exceptions raised by splitnet.

Every mistake a user can make in a spec surfaces as one `SpecError`, whose
message starts with where the mistake is (`FILE:LINE: key.path:`), so that an
editor or a terminal can jump straight to it.
"""


class SplitnetError(Exception):
    """Base class of every error splitnet raises on purpose."""


class InputError(SplitnetError, ValueError):
    """The user's input (spec, model, data file, argument, output path) cannot be used."""


class SpecError(InputError):
    """A spec, or a model it refers to, cannot be used as written.

    Attributes:
        problem: What is wrong and what is allowed, without the location.
        source: The spec file's path, or None for a spec given as a mapping.
        line: 1-based line in `source`, or None.
        path: The key path inside the spec, e.g. `freeze.hidden.units[2]`.

    Example:
        >>> err = SpecError("70 is out of range", source="q.yaml", line=14,
        ...                 path="freeze.hidden.units[2]")
        >>> str(err)
        'q.yaml:14: freeze.hidden.units[2]: 70 is out of range'
    """

    def __init__(self, problem, *, source=None, line=None, path=""):
        self.problem = problem
        self.source = source
        self.line = line
        self.path = path
        prefix = ""
        if source is not None:
            prefix = f"{source}:{line}: " if line is not None else f"{source}: "
        if path:
            prefix += f"{path}: "
        super().__init__(prefix + problem)


class ModelError(InputError):
    """A model cannot be split or merged as asked (its kind, not the spec's syntax)."""


class TrainingDiverged(SplitnetError):
    """The loss became NaN or infinite during training."""

    @classmethod
    def at(cls, loss, epoch, batch=None):
        """The error for `loss` seen in (1-based) `epoch`, and `batch` if known."""
        where = f"epoch {epoch}" if batch is None else f"epoch {epoch} (batch {batch})"
        return cls(f"the loss became {loss} in {where}; training stopped (a lower learning rate may help)")
