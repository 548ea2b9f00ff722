"""Robustness of explanations: max-sensitivity and agreement across methods (issue 11, item 4).

* :func:`max_sensitivity` — the largest relative change of a subject's relevance map under small
  input noise, ``max_δ ‖Φ(x + δ) − Φ(x)‖ / ‖Φ(x)‖`` with ``δ`` uniform in an L∞ ball (Yeh et al.
  2019, "On the (in)fidelity and sensitivity of explanations"), computed by captum's
  :func:`captum.metrics.sensitivity_max` with the noise restricted to the brain. 0 = the map does
  not move; a map that changes as much as itself scores about 1.4 (two unrelated maps of equal
  norm).
* :func:`method_agreement` — Spearman correlation of the methods' population region tables, pair
  by pair: do the methods rank the atlas regions alike?
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from brainage.errors import ConfigError


def max_sensitivity(
    model,
    volumes,
    method: str,
    mask=None,
    radius: float = 0.02,
    n_samples: int = 5,
    seed: int = 0,
    **params,
) -> np.ndarray:
    """Max-sensitivity of one method's relevance maps to small input noise, per subject.

    Parameters
    ----------
    model : torch.nn.Module
        Regressor (output (n, 1), years).
    volumes : ndarray or Tensor, shape (n, c, i, j, k)
        Model inputs (the model's input space and intensity scale).
    method : str
        Explanation method (:func:`brainage.explain.explain`).
    mask : ndarray of bool, shape (i, j, k), optional
        Only these voxels get noise (the brain); default all voxels.
    radius : float
        Half-width of the uniform noise, in the model's input units (for min–max scaled inputs,
        0.02 = 2 % of the intensity range).
    n_samples : int
        Noisy copies per subject; the maximum is taken over them.
    seed : int
        Seeds the noise (a private torch generator; the global one is left as it was).
    **params
        Parameters of the method (e.g. ``n_steps``, ``baseline``).

    Returns
    -------
    ndarray, shape (n,)
        ``max_δ ‖Φ(x + δ) − Φ(x)‖_F / ‖Φ(x)‖_F`` for each subject (captum's normalised form).

    Raises
    ------
    ConfigError
        ``radius`` not positive, ``n_samples`` < 1, or a mask of the wrong shape.
    """
    import torch
    from captum.metrics import sensitivity_max

    from brainage.explain import explain

    if not radius > 0:
        raise ConfigError(f"max-sensitivity radius must be positive; got {radius}")
    if int(n_samples) < 1:
        raise ConfigError(f"max-sensitivity needs at least 1 noisy sample; got {n_samples}")
    x = torch.as_tensor(np.asarray(volumes, dtype=np.float32))
    if mask is None:
        where = torch.ones(x.shape[2:], dtype=torch.float32)
    else:
        m = np.asarray(mask, dtype=bool)
        if m.shape != tuple(x.shape[2:]):
            raise ConfigError(f"mask {m.shape} does not match the volumes {tuple(x.shape[2:])}")
        where = torch.as_tensor(m, dtype=torch.float32)
    generator = torch.Generator().manual_seed(int(seed))

    def perturb(inputs, perturb_radius):
        noise = torch.rand(inputs.shape, generator=generator, dtype=inputs.dtype)
        return inputs + (2 * noise - 1) * perturb_radius * where

    def explanation(inputs, **_):
        batch = inputs[0] if isinstance(inputs, tuple) else inputs
        with torch.enable_grad():
            maps = explain(model, batch.detach(), method=method, **params)
        return (torch.as_tensor(maps),)  # captum iterates over a tuple of maps

    out = sensitivity_max(
        explanation, x, perturb_func=perturb, perturb_radius=float(radius),
        n_perturb_samples=int(n_samples),
    )  # fmt: skip
    return out.detach().cpu().numpy().astype(np.float64)


def method_agreement(tables: dict, value: str = "mean_relevance") -> pd.DataFrame:
    """Spearman correlation of the methods' region tables, for every pair of methods.

    Parameters
    ----------
    tables : dict of str to pandas.DataFrame
        Method → its population region table (:func:`brainage.atlas.region_table`: columns
        ``label`` and ``value``), all of one atlas.
    value : str
        Column compared (default ``mean_relevance``, the population mean map per region).

    Returns
    -------
    pandas.DataFrame
        One row per unordered pair: ``method_a``, ``method_b``, ``spearman`` (over the regions
        both tables have; NaN when a table is constant) and ``n_regions``.

    Raises
    ------
    ConfigError
        A table without ``label`` or ``value``.
    """
    from scipy import stats

    names = list(tables)
    series = {}
    for name in names:
        t = tables[name]
        if "label" not in t.columns or value not in t.columns:
            raise ConfigError(f"region table of {name!r} has no 'label' and {value!r} columns")
        series[name] = pd.Series(t[value].to_numpy(float), index=t["label"].to_numpy())
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            joined = pd.concat([series[a], series[b]], axis=1, join="inner").dropna()
            va, vb = joined.iloc[:, 0].to_numpy(), joined.iloc[:, 1].to_numpy()
            ok = len(joined) >= 3 and np.ptp(va) > 0 and np.ptp(vb) > 0
            rho = float(stats.spearmanr(va, vb).statistic) if ok else float("nan")
            rows.append({"method_a": a, "method_b": b, "spearman": rho, "n_regions": len(joined)})
    return pd.DataFrame(rows, columns=["method_a", "method_b", "spearman", "n_regions"])
