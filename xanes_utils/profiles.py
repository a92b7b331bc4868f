"""Run profiles shared by ``run_all.py`` and the notebooks, and where their expensive results are cached.

* ``quick``: minutes on a CPU (CI smoke runs);
* ``default``: the embedded dataset on a 2-core laptop CPU, about 70 minutes for every notebook with
  ``--retrain --jobs 2`` (4,033 s on 4,398 spectra, BENCHMARKS.md), about a minute from the cached results;
* ``paper``: the paper's dimensions and epochs, for a GPU.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xanes_utils.model import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "results"
FIGURES_DIR = ROOT / "figures"


@dataclass(frozen=True)
class Profile:
    """Budgets of one profile; ``model`` names a :class:`xanes_utils.model.ModelConfig` preset.

    ``lr`` is AdamW's learning rate: the paper's 1e-4 suits its 46,000 training spectra and 800 epochs;
    the few-hundred-spectrum embedded dataset needs larger steps to converge within a CPU budget.
    ``threads`` caps torch's CPU threads (``None``: torch's default). The small CPU profiles use one:
    inside a Jupyter kernel, two OpenMP threads on a 2-core machine ran small layers ~30x slower.
    ``site_embedding`` is the width of the CHGNet absorber embedding that the profile's ensemble (the model
    ``predict`` ships) reads (0: none; see :mod:`xanes_utils.site_embeddings`); the single networks of
    notebooks 02-06 keep the paper's inputs. ``angular`` likewise gives the ensemble the graphs' bond-angle
    edge features (:attr:`xanes_utils.model.ModelConfig.angular`).
    """

    name: str
    model: str
    epochs: int
    single_epochs: int
    batch_size: int
    lr: float
    homology_epochs: int
    seed: int = 0
    threads: int | None = 1
    site_embedding: int = 0
    angular: bool = False

    def ensemble_config(self) -> ModelConfig:
        """The :class:`~xanes_utils.model.ModelConfig` of the profile's ensemble."""
        from xanes_utils.model import ModelConfig

        return getattr(ModelConfig, self.model)(site_embedding=self.site_embedding, angular=self.angular)


PROFILES: dict[str, Profile] = {
    "quick": Profile("quick", model="cpu", epochs=30, single_epochs=30, batch_size=32, lr=3e-3,
                     homology_epochs=10, site_embedding=64),
    "default": Profile("default", model="cpu", epochs=400, single_epochs=400, batch_size=32, lr=2e-3,
                       homology_epochs=150, site_embedding=64),
    "paper": Profile("paper", model="paper", epochs=800, single_epochs=800, batch_size=160, lr=1e-4,
                     homology_epochs=200, threads=None, site_embedding=64),
}


def get_profile(name: str) -> Profile:
    """The named profile, with a clear error for an unknown name."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


def run_name(profile: str, data: str | Path | None = None) -> str:
    """Name of a profile's run on a dataset: the profile, plus the data's name and a hash of its path."""
    if data is None:
        return profile
    tag = hashlib.sha256(str(Path(data).resolve()).encode()).hexdigest()[:10]
    return f"{profile}-{Path(data).name.split('.')[0]}-{tag}"


def cache_dir(profile: str, data: str | Path | None = None) -> Path:
    """Directory of cached results for a profile and dataset (the embedded data when ``data`` is None)."""
    return RESULTS_DIR / run_name(profile, data)


def figures_dir(profile: str, data: str | Path | None = None) -> Path:
    """Where a run's figures go: ``figures/`` (the committed gallery) only for the default profile on the
    embedded data, ``figures/<run name>/`` (not committed) for every other profile or dataset."""
    if profile == "default" and data is None:
        return FIGURES_DIR
    return FIGURES_DIR / run_name(profile, data)
