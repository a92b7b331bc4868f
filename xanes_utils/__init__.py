"""xanes-family-bucket: FEFF10 data, the family-bucket graph-attention model and its analyses.

Public entry points are imported lazily so that ``import xanes_utils`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_dataset", "load_model", "predict"]


def __getattr__(name: str):
    if name == "load_dataset":
        from xanes_utils.dataset import load_dataset

        return load_dataset
    if name == "load_model":
        from xanes_utils.train import load_model

        return load_model
    if name == "predict":
        from xanes_utils.prediction import predict

        return predict
    raise AttributeError(f"module 'xanes_utils' has no attribute {name!r}")
