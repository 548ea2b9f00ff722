"""A non-CNN base learner: ridge regression of age on the voxels of the model input.

Voxel-wise linear models on spatially normalised images are the classical brain-age baseline
(e.g. Franke et al. 2010, relevance-vector regression on grey-matter maps; Cole & Franke 2017).
Here the features are the run's own preprocessed T1w intensities on the model grid (template
space, inside the template brain mask), standardised voxel by voxel on the training subjects;
the ridge penalty is chosen by generalised cross-validation on them (no validation subject is
used, so the ensemble head can judge it on the validation subjects like any base model). Its
errors differ from the CNNs', which is what an ensemble needs. It is stored as a torch module
(the standardisation folded into one weight map), so prediction, saving and loading work as for
every base model, and its input gradient is its weight map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from brainage.errors import InputError
from brainage.models.registry import register_model

#: Ridge penalties tried by generalised cross-validation (standardised voxels).
ALPHAS = tuple(float(a) for a in np.logspace(1, 6, 21))


@register_model("voxelridge")
class VoxelRidge(nn.Module):
    """``age = Σ_v w_v · x_v + b`` over the voxels of the input (a linear brain-age model).

    Fitted in closed form by :func:`fit_voxel_ridge` (``ensemble.learners: [voxel_ridge]``), not
    by gradient descent, so it is not a ``train.model``.

    Parameters
    ----------
    input_shape : sequence of int, length 3
        Spatial shape of the model grid.
    in_channels : int
    mean_age : float
        Initial bias, years (the fitted model replaces it).

    Notes
    -----
    Input: tensor (n, c, i, j, k) on the model grid; output: (n, 1), years. ``weight`` has shape
    (c, i, j, k), years per intensity unit, zero outside the brain mask.
    """

    closed_form = True

    def __init__(
        self,
        input_shape: Sequence[int] = (40, 48, 40),
        in_channels: int = 1,
        mean_age: float = 50.0,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.in_channels = int(in_channels)
        self.weight = nn.Parameter(torch.zeros(self.in_channels, *self.input_shape))
        self.bias = nn.Parameter(torch.tensor(float(mean_age)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict age in years, shape (n, 1), from volumes of shape (n, c, i, j, k)."""
        return ((x * self.weight).flatten(1).sum(dim=1) + self.bias).unsqueeze(1)


def fit_voxel_ridge(x, ages, mask, alphas: Sequence[float] = ALPHAS) -> tuple[VoxelRidge, dict]:
    """Fit a :class:`VoxelRidge` on training volumes.

    Parameters
    ----------
    x : ndarray, shape (n, c, i, j, k)
        Training volumes on the model grid (template space).
    ages : ndarray, shape (n,)
        Years.
    mask : ndarray of bool, shape (i, j, k)
        Voxels used (the template brain mask on the model grid).
    alphas : sequence of float
        Penalties tried by efficient leave-one-out (generalised) cross-validation.

    Returns
    -------
    model : VoxelRidge
        Eval mode.
    info : dict
        ``alpha`` (chosen), ``n_train``, ``n_voxels``, ``train_mae`` (years).

    Raises
    ------
    InputError
        Fewer than 3 training subjects, or shapes that do not match.
    """
    from sklearn.linear_model import RidgeCV

    x = np.asarray(x, dtype=np.float32)
    ages = np.asarray(ages, dtype=np.float64)
    if x.ndim != 5 or len(x) != len(ages) or x.shape[2:] != mask.shape:
        raise InputError(
            f"voxel ridge: volumes {x.shape}, ages {ages.shape} and mask {mask.shape} do not match"
        )
    if len(ages) < 3:
        raise InputError(f"voxel ridge needs ≥ 3 training subjects; got {len(ages)}")
    feats = x[:, :, mask].reshape(len(x), -1).astype(np.float64)
    mu, sd = feats.mean(axis=0), feats.std(axis=0)
    sd[sd < 1e-6] = 1.0  # constant voxels carry no information
    ridge = RidgeCV(alphas=list(alphas)).fit((feats - mu) / sd, ages)
    coef = ridge.coef_ / sd  # the standardisation folded into the weights
    model = VoxelRidge(x.shape[2:], x.shape[1])
    weight = np.zeros((x.shape[1], *mask.shape), dtype=np.float64)
    weight[:, mask] = coef.reshape(x.shape[1], -1)
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        model.bias.fill_(float(ridge.intercept_ - np.dot(coef, mu)))
    model.eval()
    with torch.no_grad():
        fitted = model(torch.as_tensor(x)).reshape(-1).double().numpy()
    info = {
        "alpha": float(ridge.alpha_),
        "n_train": len(ages),
        "n_voxels": int(mask.sum()),
        "train_mae": float(np.mean(np.abs(fitted - ages))),
    }
    return model, info
