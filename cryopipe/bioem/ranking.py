"""Ranking of models from per-particle ln P: sums, differences, ensemble weights (paper eq. 10) and plots.

The posterior of an ensemble with weights w_m (sum 1) given particles omega is
``P(M | Omega) ~ prod_omega sum_m w_m P_m,omega``; :func:`ensemble_weights` maximises it by EM
(multiplicative updates, which keep the weights on the simplex) and gives bootstrap standard deviations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _em(p: np.ndarray, w: np.ndarray, tol: float = 1e-10, max_iter: int = 10000) -> np.ndarray:
    """Maximum-likelihood weights for likelihoods p (M, I) (each column scaled freely), from start w (M,)."""
    for _ in range(max_iter):
        mix = w @ p
        new = w * (p / mix).mean(axis=1)
        if np.abs(new - w).max() < tol:
            return new
        w = new
    return w


def ensemble_weights(log_p: np.ndarray, n_boot: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ML ensemble weights (M,) for ln P (M models, I particles) and their bootstrap s.d. (M,) over particles."""
    log_p = np.asarray(log_p, dtype=np.float64)
    m, n = log_p.shape
    p = np.exp(log_p - log_p.max(axis=0, keepdims=True))
    w = _em(p, np.full(m, 1.0 / m))
    if n < 2 or n_boot < 2:
        return w, np.zeros(m)
    rng = np.random.default_rng(seed)
    boots = np.array([_em(p[:, rng.integers(0, n, n)], w, tol=1e-8, max_iter=2000) for _ in range(n_boot)])
    return w, boots.std(axis=0, ddof=1)


def ranking_table(log_p: np.ndarray, names: list[str], files: list[str] | None = None,
                  n_boot: int = 200) -> pd.DataFrame:
    """One row per model, best first: summed ln P, difference to the best, ensemble weight +- s.d., particles
    preferring the model (largest ln P), and rank."""
    log_p = np.asarray(log_p, dtype=np.float64)
    total = log_p.sum(axis=1)
    w, sd = ensemble_weights(log_p, n_boot)
    prefer = np.bincount(np.argmax(log_p, axis=0), minlength=len(names))
    df = pd.DataFrame({
        "cpModelName": names, "cpModelFile": files if files is not None else names, "cpSumLogP": total,
        "cpDeltaLogP": total - total.max(), "cpEnsembleWeight": w, "cpEnsembleWeightSd": sd,
        "cpParticlesPreferring": prefer,
    }).sort_values("cpSumLogP", ascending=False, kind="stable").reset_index(drop=True)
    df.insert(0, "cpRank", np.arange(1, len(df) + 1))
    return df


def plot_ranking(table: pd.DataFrame, path) -> None:
    """Bar plot: ln P difference to the best model and ensemble weights with their s.d."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = table["cpModelName"]
    ax1.bar(names, table["cpDeltaLogP"], color="tab:blue")
    ax1.set_ylabel("sum ln P - best")
    ax1.set_title("summed ln P relative to the best model")
    ax2.bar(names, table["cpEnsembleWeight"], yerr=table["cpEnsembleWeightSd"], color="tab:orange", capsize=4)
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("weight")
    ax2.set_title("ensemble weights (eq. 10)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cumulative(log_p: np.ndarray, names: list[str], path) -> None:
    """Cumulative sum over particles of ln P(model) - ln P(best model overall), one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_p = np.asarray(log_p, dtype=np.float64)
    best = int(np.argmax(log_p.sum(axis=1)))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k, name in enumerate(names):
        ax.plot(np.arange(1, log_p.shape[1] + 1), np.cumsum(log_p[k] - log_p[best]), label=name)
    ax.set_xlabel("particles")
    ax.set_ylabel(f"cumulative ln P - ln P({names[best]})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
