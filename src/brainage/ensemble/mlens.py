"""Multi-level ensembles (MLens, paper 001 §5; METHODS §5).

A multi-level ensemble has sub-ensembles — here the whole-brain base models (``"brain"``: the
CNNs and any non-CNN learner) and one per brain compartment (``"cortex"``, ``"subcortex"``,
``"cerebellum"``; MLens type ii) — each combined by its own guarded ridge head
(:func:`brainage.ensemble.fit_ensemble_head`), and a top ridge head over the sub-ensembles'
predictions. Paper 001 fits the top head on the sub-ensembles' test-set predictions with 5-fold
cross-validation; inside cross-fitting brainage keeps every fit on the fold's validation subjects
(no subject ever informs a head that predicts it) and fits the top head by stacking: on
out-of-sample sub-ensemble predictions of the validation subjects (5-fold cross-validated
predictions of each ridge sub-head; a mean head is not fitted and is out-of-sample already). The
top head is guarded like the sub-heads: it is kept only when its 5-fold cross-validated MAE beats
both the plain mean of the sub-ensembles and the whole-brain sub-ensemble alone — and beats the
whole brain by more than one standard error of the paired difference in absolute error over the
validation subjects (the one-standard-error rule), since with tens of validation subjects a
marginal win is noise (on IXI a 0.05-year validation win of the mean in one fold raised the
out-of-fold MAE of the run from 6.62 to 6.87 years).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from brainage.ensemble.core import RidgeHead, _check_2d, fit_ensemble_head

#: The whole-brain sub-ensemble's name.
BRAIN = "brain"


@dataclass
class MultiLevelHead:
    """Two-level head: ridge heads per sub-ensemble, then a top head over the sub-ensembles.

    Attributes
    ----------
    groups : list of str
        Sub-ensemble names, ``"brain"`` first, in the order of the top head's inputs.
    members : list of list of int
        Base-model columns of each sub-ensemble.
    heads : list of RidgeHead
        One head per sub-ensemble (a fitted ridge, or equal weights).
    top : RidgeHead
        Head over the sub-ensembles' predictions, shape (n, n_groups) → (n,).
    """

    groups: list[str]
    members: list[list[int]]
    heads: list[RidgeHead]
    top: RidgeHead
    info: dict = field(default_factory=dict)

    def sub_predict(self, predictions) -> np.ndarray:
        """Sub-ensemble predictions, shape (n, n_groups), years, from base (n, n_models)."""
        p = _check_2d(predictions)
        pairs = zip(self.heads, self.members, strict=True)
        return np.column_stack([head.predict(p[:, cols]) for head, cols in pairs])

    def predict(self, predictions) -> np.ndarray:
        """Ensemble ages, shape (n,), years, from base-model predictions (n, n_models)."""
        return self.top.predict(self.sub_predict(predictions))

    def to_dict(self) -> dict:
        """Plain JSON types (``kind: "mlens"``)."""
        return {
            "kind": "mlens",
            "groups": list(self.groups),
            "members": [list(map(int, m)) for m in self.members],
            "heads": [h.to_dict() for h in self.heads],
            "top": self.top.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> MultiLevelHead:
        """Inverse of :meth:`to_dict`."""
        return cls(
            list(d["groups"]),
            [list(m) for m in d["members"]],
            [RidgeHead.from_dict(h) for h in d["heads"]],
            RidgeHead.from_dict(d["top"]),
        )


def head_from_dict(d: dict) -> RidgeHead | MultiLevelHead:
    """Read a head written by ``to_dict``: a :class:`MultiLevelHead` or a :class:`RidgeHead`."""
    return MultiLevelHead.from_dict(d) if d.get("kind") == "mlens" else RidgeHead.from_dict(d)


def fit_multilevel_head(
    predictions,
    ages,
    groups,
    networks=None,
    alpha: float = 1.0,
    positive: bool = True,
    seed: int = 0,
) -> tuple[MultiLevelHead, dict, np.ndarray]:
    """Fit a multi-level ensemble head on validation predictions (paper 001, MLens).

    Parameters
    ----------
    predictions : array-like, shape (n_val, n_models)
        Base-model predictions for the validation subjects, years.
    ages : array-like, shape (n_val,)
        Years.
    groups : sequence of str, length n_models
        Sub-ensemble of each base model (``"brain"`` or a compartment name); must include
        ``"brain"``.
    networks : array-like of bool, shape (n_models,), optional
        Which base models are CNNs (the sub-heads' third candidate; default all).
    alpha, positive : see :class:`brainage.ensemble.RidgeHead`.
    seed : int
        Seed of the cross-validation folds.

    Returns
    -------
    head : MultiLevelHead
    info : dict
        ``{"kind": top choice ("ridge" | "mean" | "brain"), "cv_mae_*" of the top head's
        candidates, "sub_ensembles": {name: {"kind", "cv_mae_*", "val_mae"}}}``, years.
    val_pred : ndarray, shape (n_val,)
        Out-of-sample ensemble predictions of the validation subjects (to fit the age-bias
        correction on).

    Raises
    ------
    ValueError
        No base model in ``"brain"``.
    """
    p = _check_2d(predictions)
    ages = np.asarray(ages, float)
    groups = [str(g) for g in groups]
    if BRAIN not in groups:
        raise ValueError("a multi-level ensemble needs whole-brain base models ('brain')")
    nets = np.ones(p.shape[1], bool) if networks is None else np.asarray(networks, bool)
    names = [BRAIN, *sorted(dict.fromkeys(g for g in groups if g != BRAIN))]
    members = [[j for j, g in enumerate(groups) if g == name] for name in names]
    heads, sub_info, oos = [], {}, []
    for name, cols in zip(names, members, strict=True):
        head, info = fit_ensemble_head(
            p[:, cols], ages, alpha, positive, seed=seed, networks=nets[cols]
        )
        pred = head.predict(p[:, cols])
        if info["kind"] == "ridge":  # out-of-sample predictions for the top head
            pred = head.cross_val_predict(p[:, cols], ages, seed=seed)
        heads.append(head)
        oos.append(pred)
        sub_info[name] = {**info, "val_mae": float(np.mean(np.abs(pred - ages)))}
    s = np.column_stack(oos)
    is_brain = np.array([n == BRAIN for n in names])
    top, top_info = fit_ensemble_head(
        s, ages, alpha, positive, seed=seed, networks=is_brain, subset_name=BRAIN
    )
    val_pred = top.predict(s)
    if top_info["kind"] == "ridge":
        val_pred = top.cross_val_predict(s, ages, seed=seed)
    if top_info["kind"] != BRAIN:  # one-standard-error rule: the simpler model unless clearly worse
        d = np.abs(val_pred - ages) - np.abs(s[:, 0] - ages)
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else np.inf
        top_info["paired_se"] = se
        if float(np.mean(d)) > -se:
            top_info["kind_before_se_rule"] = top_info["kind"]
            top_info["kind"] = BRAIN
            top = RidgeHead.mean_of(is_brain)
            val_pred = s[:, 0].copy()
    info = {**top_info, "sub_ensembles": sub_info}
    return MultiLevelHead(names, members, heads, top), info, val_pred
