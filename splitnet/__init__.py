"""splitnet: freeze part of a Keras layer, exactly.

Example:
    >>> import splitnet
    >>> model = splitnet.build_model("configs/quickstart.yaml")  # doctest: +SKIP
    >>> splitnet.frozen_masks(model)["hidden"]["kernel"].shape   # doctest: +SKIP
    (32, 64)
"""

from splitnet._startup import quiet_tensorflow_import

quiet_tensorflow_import()  # only when running as the `splitnet` command

from splitnet.errors import ModelError, SpecError, SplitnetError  # noqa: E402
from splitnet.export import export_saved_model  # noqa: E402
from splitnet.kinds.dense import SplitDense  # noqa: E402
from splitnet.merge import merge_model, merged_weights  # noqa: E402
from splitnet.saving import load_model  # noqa: E402
from splitnet.spec import Spec, load_spec  # noqa: E402
from splitnet.split import build_model, frozen_masks, split_model  # noqa: E402
from splitnet.verify import verify  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ModelError",
    "Spec",
    "SpecError",
    "SplitDense",
    "SplitnetError",
    "build_model",
    "export_saved_model",
    "frozen_masks",
    "load_model",
    "load_spec",
    "merge_model",
    "merged_weights",
    "split_model",
    "verify",
    "__version__",
]
