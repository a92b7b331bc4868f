"""Deep ensemble of the family-bucket model: a mean spectrum, a per-point uncertainty and a domain score.

Members share one :class:`~xanes_utils.model.ModelConfig` and differ by seed and by a bootstrap resample
(with replacement) of the training graphs; each is trained by :func:`xanes_utils.train.train`, with the
same validation split choosing its best epoch. For graphs of B sites the members give spectra
[M, B, 111]; the prediction is their mean and its uncertainty

    mu_std = scale * std over members (ddof 1)                  [B, 111]

where ``scale`` is fitted on the validation split (:func:`xanes_utils.calibration.fit_scale`) so that
the ±2σ band holds the Gaussian share of validation points.

Domain of applicability (:attr:`Ensemble.domain`): a site's score is the distance of its last hidden
layer activations (pooled, [128] for the ``cpu`` preset) to the ``k`` nearest training sites, in units
of the median such distance of validation sites, averaged over members. Sites scoring above the
threshold (a quantile of validation scores) are flagged as out of domain.

Checkpoints hold every member's weights, the calibration and the training embeddings, as plain tensors
and primitive types (``torch.load(weights_only=True)``), with a SHA-256 sidecar.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from xanes_utils.dataset import DATA_DIR
from xanes_utils.dense import DenseGraphs, GraphLoader, collate_for
from xanes_utils.io import write_checksummed
from xanes_utils.model import ModelConfig, XanesGAT
from xanes_utils.train import TrainConfig, TrainTask, predictor, read_payload, stack_targets, train_many

log = logging.getLogger(__name__)

ENSEMBLE_FORMAT = "xanes-family-bucket-ensemble/1"
#: The committed ensemble trained on the embedded data (notebook 03), what ``predict`` uses by default.
DEFAULT_ENSEMBLE = DATA_DIR / "models" / "family_bucket_ensemble.pt"
#: Training sites each graph is compared with for the domain score.
K_NEAREST = 5
#: Share of validation sites whose score stays under the out-of-domain threshold.
DOMAIN_QUANTILE = 0.95


def bootstrap(n: int, seed: int, weights: np.ndarray | None = None) -> np.ndarray:
    """``n`` indices drawn with replacement from ``range(n)`` (seeded), sorted; with ``weights`` [n] (not
    all zero) index i is drawn with probability proportional to ``weights[i]``
    (:func:`xanes_utils.sampling.family_weights`)."""
    rng = np.random.default_rng(seed)
    if weights is None:
        return np.sort(rng.integers(0, n, size=n))
    weights = np.asarray(weights, float)
    if weights.shape != (n,) or not np.all(np.isfinite(weights)) or weights.min() < 0 or weights.sum() <= 0:
        raise ValueError(f"bootstrap weights must be {n} finite, non-negative numbers, not all zero")
    return np.sort(rng.choice(n, size=n, replace=True, p=weights / weights.sum()))


@dataclass
class Domain:
    """Out-of-domain score settings: per member, the training embeddings [n_train, d] (float16) and the
    median k-nearest distance of validation sites; the flag threshold in those units."""

    embeddings: list[Tensor] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)
    threshold: float = float("inf")
    k: int = K_NEAREST

    def to_dict(self) -> dict:
        return {"embeddings": [e.to(torch.float16) for e in self.embeddings], "reference": list(self.reference),
                "threshold": float(self.threshold), "k": int(self.k)}

    @classmethod
    def from_dict(cls, data: dict) -> Domain:
        return cls([e.float() for e in data["embeddings"]], [float(r) for r in data["reference"]],
                   float(data["threshold"]), int(data["k"]))


def knn_distance(query: Tensor, reference: Tensor, k: int) -> Tensor:
    """Mean Euclidean distance [B] of each query row to its ``k`` nearest ``reference`` rows."""
    d = torch.cdist(query.float(), reference.float())
    return d.topk(min(k, reference.shape[0]), dim=1, largest=False).values.mean(dim=1)


class Ensemble(nn.Module):
    """Members of one configuration; ``forward`` gives member spectra [M, B, out_dim]."""

    def __init__(self, members: Sequence[XanesGAT], scale: float = 1.0, domain: Domain | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if any(m.config != members[0].config for m in members):
            raise ValueError("ensemble members must share one ModelConfig")
        self.members = nn.ModuleList(members)
        self.scale = float(scale)
        self.domain = domain or Domain()

    @property
    def config(self) -> ModelConfig:
        """The members' shared configuration."""
        return self.members[0].config

    def forward(self, batch: Data | Batch | DenseGraphs, embeddings: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Member spectra [M, B, out_dim]; with ``embeddings`` also the last hidden layer [M, B, d]."""
        outs, embs = [], []
        for member in self.members:
            out, internals = member(batch, return_internals=True)
            outs.append(out)
            embs.append(internals[f"mlp{len(member.config.mlp_dims)}"])
        return (torch.stack(outs), torch.stack(embs)) if embeddings else torch.stack(outs)


@dataclass
class EnsemblePrediction:
    """``mu`` [B, 111] (member mean), ``mu_std`` [B, 111] (calibrated), ``members`` [M, B, 111], the
    domain ``score`` [B] and ``out_of_domain`` [B] flags."""

    mu: np.ndarray
    mu_std: np.ndarray
    members: np.ndarray
    score: np.ndarray
    out_of_domain: np.ndarray


@torch.no_grad()
def member_outputs(model: Ensemble, graphs: Sequence[Data], batch_size: int = 512, compile: bool = False
                   ) -> tuple[Tensor, Tensor]:
    """Member spectra [M, n, out] and last hidden layers [M, n, d] of ``graphs`` (eval mode; collated once for
    all members). ``compile``: through :func:`torch.compile` (see :func:`xanes_utils.train.predictor`)."""
    model.eval()
    device = next(model.parameters()).device
    forward, batch_size = predictor(model, batch_size, compile)
    outs, embs = [], []
    for b in GraphLoader(collate_for(model.config, graphs), batch_size):
        out, emb = forward(b.to(device), embeddings=True)
        outs.append(out.cpu())
        embs.append(emb.cpu())
    return torch.cat(outs, dim=1), torch.cat(embs, dim=1)


def domain_scores(model: Ensemble, embeddings: Tensor) -> np.ndarray:
    """Score [n] of embeddings [M, n, d]: member-averaged k-nearest training distance over its reference."""
    dom = model.domain
    if not dom.reference:
        return np.full(embeddings.shape[1], np.nan)
    per_member = [knn_distance(e, ref, dom.k) / r for e, ref, r in zip(embeddings, dom.embeddings, dom.reference)]
    return torch.stack(per_member).mean(0).numpy()


def predict_ensemble(model: Ensemble, graphs: Sequence[Data], batch_size: int = 512, compile: bool = False
                     ) -> EnsemblePrediction:
    """Mean, calibrated standard deviation, member spectra and domain scores for ``graphs`` (``compile``: see
    :func:`member_outputs`)."""
    if not graphs:
        z = np.zeros((0, model.config.out_dim), np.float32)
        return EnsemblePrediction(z, z, np.zeros((len(model.members),) + z.shape, np.float32), np.zeros(0),
                                  np.zeros(0, bool))
    members, emb = member_outputs(model, graphs, batch_size, compile)
    members_np = members.numpy()
    mu, std = mean_std(members_np)
    score = domain_scores(model, emb)
    return EnsemblePrediction(mu, model.scale * std, members_np, score, score > model.domain.threshold)


def mean_std(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and raw (uncalibrated) standard deviation (ddof 1; 0 for one member) over the members axis of
    [M, ...]; multiply the standard deviation by :attr:`Ensemble.scale` to calibrate it."""
    std = members.std(axis=0, ddof=1) if members.shape[0] > 1 else np.zeros_like(members[0])
    return members.mean(axis=0), std


# ----------------------------------------------------------------------------------------- training

def train_ensemble(train_graphs: Sequence[Data], val_graphs: Sequence[Data], model_config: ModelConfig,
                   train_config: TrainConfig, n_members: int = 5, jobs: int | None = 1, progress: bool = True,
                   weights: np.ndarray | None = None) -> tuple[Ensemble, list[dict]]:
    """Train ``n_members`` members (member m: seed ``train_config.seed + 1 + m``, bootstrap resample of
    ``train_graphs`` with that seed, drawn in proportion to ``weights`` if given), then calibrate the
    spread and fit the domain score on ``val_graphs``. ``jobs`` > 1 (``None``: one per core) trains
    members in parallel processes of one thread each (:func:`xanes_utils.train.train_many`). Returns the
    ensemble and the members' histories."""
    if n_members < 2:
        raise ValueError(f"an ensemble needs at least 2 members for a spread, not {n_members}")
    tasks = []
    for m in range(n_members):
        seed = train_config.seed + 1 + m
        pick = [train_graphs[i] for i in bootstrap(len(train_graphs), seed, weights)]
        tasks.append(TrainTask(f"ensemble member {m}", pick, val_graphs, model_config,
                               dataclasses.replace(train_config, seed=seed)))
    results = train_many(tasks, jobs, progress)
    ensemble = Ensemble([model for model, _ in results])
    fit_ensemble(ensemble, train_graphs, val_graphs)
    return ensemble, [history.as_dict() for _, history in results]


def fit_ensemble(model: Ensemble, train_graphs: Sequence[Data], val_graphs: Sequence[Data]) -> None:
    """Fit the domain score (training embeddings, validation reference distances, threshold) and the
    calibration scale on ``val_graphs``, in place."""
    from xanes_utils.calibration import fit_scale

    _, train_emb = member_outputs(model, train_graphs)
    val_members, val_emb = member_outputs(model, val_graphs)
    k = model.domain.k
    train_emb = train_emb.half().float()  # as stored in the checkpoint
    model.domain = Domain(list(train_emb), [float(knn_distance(v, t, k).median()) for v, t in zip(val_emb, train_emb)],
                          k=k)
    model.domain.threshold = float(np.quantile(domain_scores(model, val_emb), DOMAIN_QUANTILE))
    mu, std = mean_std(val_members.numpy())
    model.scale = fit_scale(stack_targets(val_graphs), mu, std)
    log.info("ensemble of %d: calibration scale %.3f, domain threshold %.3f", len(model.members), model.scale,
             model.domain.threshold)


# ----------------------------------------------------------------------------------------- files

def save_ensemble(path: str | Path, model: Ensemble, extra: dict | None = None) -> None:
    """Write the ensemble (weights, config, calibration, domain) with a SHA-256 sidecar."""
    payload = {
        "format": ENSEMBLE_FORMAT,
        "model_config": model.config.to_dict(),
        "members": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in model.members],
        "scale": float(model.scale),
        "domain": model.domain.to_dict(),
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_checksummed(path, buffer.getvalue())


def ensemble_from_payload(payload: dict, name: str) -> Ensemble:
    """The ensemble (eval mode) of a payload read by :func:`xanes_utils.train.read_payload`; checks its
    configuration, that every weight is finite and the calibration, raising ``ValueError`` naming ``name``."""
    try:
        config = ModelConfig.from_dict(payload["model_config"])
        members = []
        for i, state in enumerate(payload["members"]):
            bad = [k for k, v in state.items() if not isinstance(v, Tensor) or not torch.isfinite(v).all()]
            if bad:
                raise ValueError(f"member {i}: weight {bad[0]!r} is not a finite tensor")
            member = XanesGAT(config)
            member.load_state_dict(state)
            members.append(member.eval())
        domain = Domain.from_dict(payload["domain"])
        scale = float(payload["scale"])
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{name}: invalid ensemble checkpoint ({exc})") from exc
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"{name}: invalid calibration scale {scale}")
    return Ensemble(members, scale, domain).eval()


def load_ensemble(path: str | Path = DEFAULT_ENSEMBLE) -> tuple[Ensemble, dict]:
    """The ensemble of ``path`` and the file's ``extra`` dict (checksum, format and weights checked)."""
    payload = read_payload(path, ENSEMBLE_FORMAT)
    return ensemble_from_payload(payload, str(path)), payload.get("extra", {})
