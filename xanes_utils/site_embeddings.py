"""Site embeddings of the absorber from a pretrained universal interatomic potential (CHGNet).

The star graph sees the absorber's 20 nearest atoms by species and distance. CHGNet (weights in its
wheel, Modified BSD licence) was trained on ~1.5 M Materials Project relaxation frames; its per-atom
features after the last interaction block (``atom_fea``, 64 numbers per atom) summarise the chemistry
and geometry of each site's environment as that potential sees it, the OmniXAS idea of transferring a
pretrained potential's site features to spectra. :func:`attach_site_embeddings` stores the absorber's
row as ``site_embedding`` [1, 64] on each graph; models read it with ``ModelConfig(site_embedding=64)``.
Width 128 (``ModelConfig(site_embedding=128)``) appends the mean row of the absorber's first shell
(:func:`xanes_utils.structures.first_shell_neighbours`): the anions' features carry what else they bond to.

Features are computed once per distinct structure (on the CPU, one thread, no network) and cached in a
checksummed file keyed by the structures and the potential's version.
"""

from __future__ import annotations

import hashlib
import io
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pymatgen.core import Structure
from torch_geometric.data import Data

from xanes_utils.graphs import structure_json
from xanes_utils.io import read_checksummed, write_checksummed
from xanes_utils.structures import first_shell_neighbours

log = logging.getLogger(__name__)

#: Width of a site embedding (CHGNet's atom feature size).
SITE_EMBEDDING_DIM = 64
#: Width of the absorber's embedding followed by the mean embedding of its first shell.
SHELL_EMBEDDING_DIM = 2 * SITE_EMBEDDING_DIM
#: Embedding widths a model may read.
WIDTHS = (SITE_EMBEDDING_DIM, SHELL_EMBEDDING_DIM)
#: CHGNet weights used (shipped in the chgnet wheel); pinned so that an upgrade cannot change them silently.
MODEL_NAME = "0.3.0"
#: Format tag of the on-disk cache.
CACHE_FORMAT = "xanes-site-embeddings/1"
#: Structures per CHGNet batch.
BATCH = 16


#: What to do when CHGNet is missing.
MISSING = "site embeddings need CHGNet: pip install 'chgnet>=0.4.2'"


@lru_cache(maxsize=1)
def _potential() -> Any:
    """The pretrained CHGNet model (loaded once), in evaluation mode."""
    try:
        from chgnet.model import CHGNet
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    model = CHGNet.load(model_name=MODEL_NAME, verbose=False)
    model.eval()
    return model


def potential_version() -> str:
    """Name and version of the potential whose features are used (part of every cache key; the model is
    not loaded)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"chgnet {version('chgnet')} / {MODEL_NAME}"
    except PackageNotFoundError as exc:  # even cached embeddings are keyed by the potential's version
        raise ImportError(MISSING) from exc


def atom_features(structures: Sequence[Structure], names: Sequence[str] | None = None, progress: bool = True
                  ) -> list[np.ndarray]:
    """CHGNet's per-atom features [n_atoms, 64] float32 of each structure; a structure CHGNet cannot
    featurise raises a ValueError naming it (``names``, default its index)."""
    from tqdm import tqdm

    model = _potential()
    names = list(names) if names is not None else [f"structure {i}" for i in range(len(structures))]
    out: list[np.ndarray] = []
    bar = tqdm(total=len(structures), desc="site embeddings", unit="structure", disable=not progress)
    with torch.no_grad():
        for start in range(0, len(structures), BATCH):
            chunk = list(structures[start:start + BATCH])
            try:
                preds = model.predict_structure(chunk, task="e", return_atom_feas=True, batch_size=BATCH)
                preds = [preds] if isinstance(preds, dict) else preds  # CHGNet unwraps a single result
            except Exception:  # noqa: BLE001 - find the structure that fails, one at a time
                preds = []
                for i, structure in enumerate(chunk):
                    try:
                        preds.append(model.predict_structure(structure, task="e", return_atom_feas=True))
                    except Exception as exc:  # noqa: BLE001
                        raise ValueError(f"{names[start + i]}: CHGNet cannot featurise it ({exc})") from exc
            for i, pred in enumerate(preds):
                feats = np.asarray(pred["atom_fea"], np.float32)
                if feats.shape != (len(chunk[i]), SITE_EMBEDDING_DIM) or not np.isfinite(feats).all():
                    raise ValueError(f"{names[start + i]}: CHGNet gave features of shape {feats.shape} or "
                                     "non-finite values")
                out.append(feats)
            bar.update(len(chunk))
    bar.close()
    return out


def cache_file_name(stem: str, width: int) -> str:
    """File name of a cache of ``width``-wide embeddings (``stem``.pt for the absorber's 64)."""
    return f"{stem}.pt" if width == SITE_EMBEDDING_DIM else f"{stem}-{width}.pt"


def _shell_indices(item: Any, name: str) -> list[int]:
    """Cell indices of the first-shell atoms of ``item``'s absorber."""
    shell = first_shell_neighbours(item.structure, int(item.site))
    if not shell:
        raise ValueError(f"{name}: no atom within 5 Å of site {item.site}, so it has no first shell")
    return [int(nb.index) for nb in shell]


def site_embeddings(items: Sequence[Any], cache_path: str | Path | None = None, progress: bool = True,
                    width: int = SITE_EMBEDDING_DIM) -> torch.Tensor:
    """Embeddings [n, width] float32 of each item's absorber (objects with ``.structure``, ``.site`` and
    optionally ``.id``, as :func:`xanes_utils.graphs.build_graphs` takes), computed once per distinct structure.
    ``width`` 64: the absorber's CHGNet row; 128: that row, then the mean row of its first shell.

    With ``cache_path`` the result is stored (with a SHA-256 sidecar) under a key of the structures, the
    sites, the width and the potential's version; a matching cache is loaded without reading any structure,
    a stale, unreadable or corrupt one is logged and recomputed.
    """
    if width not in WIDTHS:
        raise ValueError(f"site embedding width must be one of {WIDTHS}, not {width}")
    hashes = [hashlib.sha256(structure_json(it).encode()).hexdigest() for it in items]
    sites = [int(it.site) for it in items]
    tags = [potential_version()] + ([f"width {width}"] if width != SITE_EMBEDDING_DIM else [])
    key = hashlib.sha256("|".join([*tags, *hashes, *map(str, sites)]).encode()).hexdigest()
    if cache_path is not None and Path(cache_path).exists():
        try:
            payload = torch.load(io.BytesIO(read_checksummed(cache_path)), map_location="cpu", weights_only=True)
            if payload.get("format") != CACHE_FORMAT or payload.get("key") != key:
                raise ValueError("stale cache (other structures, width or potential version)")
            return payload["embeddings"]
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
            log.warning("site-embedding cache %s not used (%s); recomputing it", cache_path, exc)
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        first.setdefault(h, i)
    names = [f"item {getattr(it, 'id', i)}" for i, it in enumerate(items)]
    feats = dict(zip(first, atom_features([items[i].structure for i in first.values()],
                                          [names[i] for i in first.values()], progress)))
    rows = [feats[h][site] for h, site in zip(hashes, sites)]
    if width == SHELL_EMBEDDING_DIM:
        rows = [np.concatenate([row, feats[h][_shell_indices(it, name)].mean(axis=0)])
                for row, h, it, name in zip(rows, hashes, items, names)]
    out = torch.from_numpy(np.stack(rows))
    if cache_path is not None:
        buffer = io.BytesIO()
        torch.save({"format": CACHE_FORMAT, "key": key, "embeddings": out}, buffer)
        write_checksummed(cache_path, buffer.getvalue())
    return out


def attach_site_embeddings(graphs: Sequence[Data], items: Sequence[Any], cache_path: str | Path | None = None,
                           progress: bool = True, width: int = SITE_EMBEDDING_DIM) -> None:
    """Set ``site_embedding`` [1, width] on each graph from its item (see :func:`site_embeddings`)."""
    if len(graphs) != len(items):
        raise ValueError(f"{len(graphs)} graphs for {len(items)} items")
    for graph, row in zip(graphs, site_embeddings(items, cache_path, progress, width)):
        graph.site_embedding = row.view(1, -1)
