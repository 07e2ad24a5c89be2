"""Reading Lightning checkpoints safely: :func:`load_checkpoint_weights`.

Below :mod:`tsode.tracking` (best weights of a finished fit), :mod:`tsode.api` and
:mod:`tsode.cli`; ``tsode.api.load_checkpoint_weights`` is the same function.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from tsode.errors import CheckpointFileError, check_finite_state_dict


def load_checkpoint_weights(path: str | Path) -> dict[str, Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (e.g. the best one of a fit).

    Always read with ``weights_only=True`` (tsode's config classes are allowlisted on
    import): a checkpoint holding other pickled objects is refused, never unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointFileError(
            f"{path}: checkpoint holds objects torch.load(weights_only=True) refuses ({err}); "
            "tsode never unpickles arbitrary objects from a checkpoint"
        ) from err
    except (EOFError, OSError, RuntimeError) as err:
        size = path.stat().st_size
        raise CheckpointFileError(
            f"{path}: not a readable checkpoint ({size} bytes; truncated or corrupt?): "
            f"{type(err).__name__}: {err or 'unexpected end of file'}"
        ) from err
    if not isinstance(state, Mapping) or not isinstance(state.get("state_dict"), Mapping):
        raise CheckpointFileError(f"{path}: not a Lightning checkpoint (no 'state_dict' mapping)")
    weights = state["state_dict"]
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in weights.items()):
        raise CheckpointFileError(f"{path}: 'state_dict' is not a mapping of names to tensors")
    check_finite_state_dict(weights, str(path))
    return weights
