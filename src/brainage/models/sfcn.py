"""The Simple Fully Convolutional Network (SFCN) of Peng et al. 2021 (METHODS §3).

Peng H, Gong W, Beckmann CF, Vedaldi A, Smith SM. Accurate brain age prediction with lightweight
deep neural networks. Med Image Anal 68:101871 (2021), doi:10.1016/j.media.2020.101871. The
submodule names follow the MIT-licensed reference code (github.com/ha-ha-ha-han/
UKBiobank_deep_pretrain, ``dp_model/model_files/sfcn.py``), so that the published UK Biobank
weights (``run_20190719_00_epoch_best_mae.p``, saved from ``torch.nn.DataParallel``) load after
the leading ``module.`` of their keys is stripped (see ``train.init_from``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from brainage.errors import ConfigError
from brainage.models.registry import register_model

#: Channels of the six feature-extractor blocks of the paper.
PAPER_CHANNELS = (32, 64, 128, 256, 256, 64)
#: Output modes of :class:`SFCN`.
OUTPUTS = ("regression", "soft_label")
#: Logit offset (natural log) of bins added by :meth:`SFCN.extend_bins`: each new bin starts with
#: 1/1000 of the probability of the edge bin it is copied from.
EXTEND_LOG_RATIO = math.log(1000.0)


def gaussian_soft_labels(
    ages: torch.Tensor, bin_start: float, bin_width: float, n_bins: int, sigma: float
) -> torch.Tensor:
    """Turn ages into Gaussian soft labels over age bins (Peng et al. 2021).

    Bin ``b`` covers ``[bin_start + b·bin_width, bin_start + (b + 1)·bin_width)`` years; its label
    is the mass of N(age, sigma²) in that interval (a difference of normal CDFs, as in the
    reference ``num2vect``), renormalised to sum to 1 over the bins (the reference leaves the mass
    outside the bin range out; renormalising makes the label a distribution, so KL ≥ 0).

    Parameters
    ----------
    ages : Tensor, shape (n,)
        Ages, years.
    bin_start, bin_width : float
        Lower edge of the first bin and bin width, years.
    n_bins : int
    sigma : float
        Standard deviation of the label, years (paper: 1).

    Returns
    -------
    Tensor, shape (n, n_bins)
        Non-negative rows summing to 1 (float dtype of ``ages``, at least float32).
    """
    ages = torch.as_tensor(ages)
    if not ages.is_floating_point():
        ages = ages.float()
    edges = bin_start + bin_width * torch.arange(n_bins + 1, dtype=ages.dtype, device=ages.device)
    cdf = torch.special.ndtr((edges[None, :] - ages.reshape(-1, 1)) / float(sigma))
    mass = cdf[:, 1:] - cdf[:, :-1]
    return mass / mass.sum(dim=1, keepdim=True).clamp_min(torch.finfo(mass.dtype).tiny)


def covering_bins(
    ages, bin_start: float, bin_width: float, n_bins: int, margin: float
) -> tuple[int, int]:
    """Count the bins to add below and above so that every age ± ``margin`` lies inside them.

    Bins are only added, never removed, and keep the grid ``bin_start + k·bin_width``.

    Parameters
    ----------
    ages : array-like, shape (n,)
        Ages, years.
    bin_start, bin_width : float
        Current lower edge and width, years.
    n_bins : int
        Current number of bins.
    margin : float
        Years required between every age and the edge of the bin range (the trainer uses
        2 × ``train.soft_label_sigma``, so that ≥ 97.7 % of each soft label lies inside).

    Returns
    -------
    n_below, n_above : int
    """
    ages = np.asarray(ages, dtype=np.float64)
    lo, hi = float(ages.min()) - margin, float(ages.max()) + margin
    bin_end = bin_start + n_bins * bin_width
    n_below = max(0, math.ceil((bin_start - lo) / bin_width - 1e-9))
    n_above = max(0, math.ceil((hi - bin_end) / bin_width - 1e-9))
    return n_below, n_above


def _conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    """Conv3d(3, pad 1) → BatchNorm3d → MaxPool3d(2) → ReLU, or Conv3d(1) → BatchNorm3d → ReLU."""
    if pool:
        return nn.Sequential(
            nn.Conv3d(c_in, c_out, kernel_size=3, padding=1),
            nn.BatchNorm3d(c_out),
            nn.MaxPool3d(2, stride=2),
            nn.ReLU(),
        )
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel_size=1, padding=0), nn.BatchNorm3d(c_out), nn.ReLU()
    )


@register_model("sfcn")
class SFCN(nn.Module):
    """Simple Fully Convolutional Network (Peng et al. 2021): age in years, shape (n, 1).

    ``feature_extractor`` has one block ``conv_i`` per entry of ``channels``: all but the last
    are Conv3d(kernel 3, padding 1) → BatchNorm3d → MaxPool3d(2) → ReLU, the last is
    Conv3d(kernel 1) → BatchNorm3d → ReLU. ``classifier`` is average pooling over the remaining
    grid (adaptive, so that any input size of ≥ 2^(len(channels) − 1) voxels per axis works; at
    160 × 192 × 160 it is the reference's AvgPool3d(5, 6, 5)) → Dropout, then

    * ``output="soft_label"`` (the paper's): ``classifier.conv_6`` = Conv3d(64, n_bins, 1) and a
      log-softmax over ``n_bins`` age bins. :meth:`log_probs` gives the log-probabilities for the
      KL loss (``train.loss: kl``); :meth:`forward` returns the expected age
      Σ_b softmax_b · bin_centers_b, years, so that prediction and explanation work as for
      every brainage model. There is no bias-initialised output neuron (``output_layer`` is
      None, ``mean_age`` is unused), so LRP relevance through the softmax expectation is not
      conserved; use ``output="regression"`` for LRP sums in years.
    * ``output="regression"`` (brainage default): flatten → ``output_layer`` = Linear(64, 1)
      whose bias is the training mean age (the bias-initialised output of all brainage models).

    Parameters
    ----------
    input_shape : sequence of int, length 3
        Spatial input shape (i, j, k) in voxels (paper: 160 × 192 × 160 at 1 mm MNI); only
        checked against the minimum size.
    in_channels : int
        Number of modalities (paper: 1, skull-stripped T1w).
    channels : sequence of int
        Channels of the feature-extractor blocks (paper: 32, 64, 128, 256, 256, 64).
    dropout : float
        Dropout probability before the output (paper: 0.5).
    output : {"regression", "soft_label"}
    bin_start : float
        Lower edge of the first age bin, years (paper: 42).
    bin_width : float
        Width of the age bins, years (paper: 1).
    n_bins : int
        Number of age bins (paper: 40, i.e. 42–82 years).
    mean_age : float
        Initial (and, in training, fixed) output bias, years; regression only.

    Attributes
    ----------
    bin_centers : Tensor, shape (n_bins,)
        Centres of the age bins, years (a buffer that is not part of the state dict).

    Notes
    -----
    Input ``x`` : tensor, shape (n, in_channels, i, j, k); output : tensor, shape (n, 1), years.
    The number of parameters does not depend on the input size (fully convolutional):
    2,952,936 with the paper's channels and 40 bins (2,950,401 in regression mode), the paper's
    "≈ 3 M" (``tests/test_models_sfcn.py`` counts them).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (160, 192, 160),
        in_channels: int = 1,
        channels: Sequence[int] = PAPER_CHANNELS,
        dropout: float = 0.5,
        output: str = "regression",
        bin_start: float = 42.0,
        bin_width: float = 1.0,
        n_bins: int = 40,
        mean_age: float = 50.0,
    ) -> None:
        super().__init__()
        self.check_params(
            {
                "channels": channels,
                "dropout": dropout,
                "output": output,
                "bin_start": bin_start,
                "bin_width": bin_width,
                "n_bins": n_bins,
            }
        )
        self.input_shape = tuple(int(s) for s in input_shape)
        channels = tuple(int(c) for c in channels)
        need = 2 ** (len(channels) - 1)
        if len(self.input_shape) != 3 or min(self.input_shape) < need:
            raise ConfigError(
                f"SFCN with {len(channels)} blocks needs inputs of at least {need} voxels per "
                f"axis ({len(channels) - 1} max-poolings); got input shape {self.input_shape} — "
                "use a finer train.resolution_mm or fewer train.model_params.channels"
            )
        self.output = output
        self.feature_extractor = nn.Sequential()
        c_in = int(in_channels)
        for i, c_out in enumerate(channels):
            block = _conv_block(c_in, c_out, pool=i < len(channels) - 1)
            self.feature_extractor.add_module(f"conv_{i}", block)
            c_in = c_out
        self.classifier = nn.Sequential()
        self.classifier.add_module("average_pool", nn.AdaptiveAvgPool3d(1))
        self.classifier.add_module("dropout", nn.Dropout(float(dropout)))
        if output == "soft_label":
            self.classifier.add_module(
                f"conv_{len(channels)}", nn.Conv3d(c_in, int(n_bins), kernel_size=1)
            )
            self.output_layer = None
            self._set_bins(float(bin_start), float(bin_width), int(n_bins))
        else:
            self.output_layer = nn.Linear(c_in, 1)
            self.set_output_bias(mean_age)
            self.bin_start = self.bin_width = self.n_bins = None

    @staticmethod
    def check_params(params: dict) -> None:
        """Validate the configurable values of ``train.model_params`` for ``sfcn``.

        Raises
        ------
        ConfigError
            A value out of range, naming the key, what is allowed and what was given.
        """
        key = "train.model_params"
        output = params.get("output", "regression")
        if output not in OUTPUTS:
            raise ConfigError(f"'{key}.output' must be one of {', '.join(OUTPUTS)}; got {output!r}")
        channels = params.get("channels", PAPER_CHANNELS)
        if (
            isinstance(channels, str | bytes)
            or not isinstance(channels, Sequence)
            or len(channels) < 2
            or not all(isinstance(c, int) and c >= 1 for c in channels)
        ):
            raise ConfigError(
                f"'{key}.channels' must be a list of ≥ 2 positive integers; got {channels!r}"
            )
        dropout = params.get("dropout", 0.5)
        if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            raise ConfigError(f"'{key}.dropout' must be a number in [0, 1); got {dropout!r}")
        n_bins = params.get("n_bins", 40)
        if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 2:
            raise ConfigError(f"'{key}.n_bins' must be an integer ≥ 2; got {n_bins!r}")
        width = params.get("bin_width", 1.0)
        if not isinstance(width, int | float) or not width > 0:
            raise ConfigError(f"'{key}.bin_width' must be a number > 0 (years); got {width!r}")
        start = params.get("bin_start", 42.0)
        if not isinstance(start, int | float) or isinstance(start, bool):
            raise ConfigError(f"'{key}.bin_start' must be a number (years); got {start!r}")

    @staticmethod
    def is_soft_label(params: dict) -> bool:
        """Return whether ``train.model_params`` select the soft-label output (``loss: kl``)."""
        return params.get("output", "regression") == "soft_label"

    def _set_bins(self, bin_start: float, bin_width: float, n_bins: int) -> None:
        self.bin_start, self.bin_width, self.n_bins = bin_start, bin_width, n_bins
        old = getattr(self, "bin_centers", None)
        dtype = old.dtype if old is not None else torch.get_default_dtype()
        device = old.device if old is not None else None
        centers = bin_start + bin_width * (torch.arange(n_bins, dtype=torch.float64) + 0.5)
        self.register_buffer(
            "bin_centers", centers.to(device=device, dtype=dtype), persistent=False
        )

    @property
    def bin_conv(self) -> nn.Conv3d:
        """The soft-label output convolution ``classifier.conv_<len(channels)>`` (``conv_6``)."""
        if self.output != "soft_label":
            raise AttributeError("a regression SFCN has no age bins")
        return self.classifier[-1]

    def set_output_bias(self, mean_age: float) -> None:
        """Set the output neuron's bias to ``mean_age`` (years; regression only)."""
        if self.output_layer is None:
            raise AttributeError("a soft-label SFCN has no output neuron (its bins are in years)")
        with torch.no_grad():
            self.output_layer.bias.fill_(float(mean_age))

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the age bins, shape (n, n_bins), from volumes (n, c, i, j, k)."""
        if self.output != "soft_label":
            raise AttributeError("log_probs needs train.model_params.output: soft_label")
        logits = self.classifier(self.feature_extractor(x)).flatten(1)
        return torch.log_softmax(logits, dim=1)

    def soft_labels(self, ages: torch.Tensor, sigma: float) -> torch.Tensor:
        """Gaussian soft labels of ``ages`` (years, shape (n,)) on this model's bins, (n, n_bins).

        See :func:`gaussian_soft_labels`.
        """
        return gaussian_soft_labels(ages, self.bin_start, self.bin_width, self.n_bins, sigma)

    def covering_bins(self, ages, margin: float) -> tuple[int, int]:
        """Bins to add below and above so the bins cover ``ages`` ± ``margin`` (years).

        See :func:`covering_bins`.
        """
        return covering_bins(ages, self.bin_start, self.bin_width, self.n_bins, margin)

    @torch.no_grad()
    def extend_bins(self, n_below: int, n_above: int, log_ratio: float = EXTEND_LOG_RATIO) -> None:
        """Add age bins below and above the current range (e.g. to fine-tune pretrained weights).

        The weights of the existing bins are kept unchanged. Each new bin copies the
        ``conv_6`` weights and bias of the nearest edge bin, with its bias lowered by
        ``log_ratio``: for every input a new bin starts with the edge bin's probability divided
        by e^log_ratio (1/1000 by default), so the pretrained predictions change little at the
        start of fine-tuning, and the KL loss (whose gradient per logit is p − target) moves
        mass into the new bins where the cohort's ages are.

        Parameters
        ----------
        n_below, n_above : int
            Bins to add below ``bin_start`` and above the last bin (≥ 0).
        log_ratio : float
            Logit offset of the new bins (natural log), ≥ 0.
        """
        if n_below < 0 or n_above < 0:
            raise ValueError(f"'n_below' and 'n_above' must be ≥ 0; got {n_below}, {n_above}")
        if n_below == 0 and n_above == 0:
            return
        old = self.bin_conv
        w, b = old.weight, old.bias
        n = w.shape[0]
        new = nn.Conv3d(old.in_channels, n + n_below + n_above, kernel_size=1)
        new = new.to(device=w.device, dtype=w.dtype)
        new.weight[n_below : n_below + n] = w
        new.weight[:n_below] = w[:1]
        new.weight[n_below + n :] = w[-1:]
        new.bias[n_below : n_below + n] = b
        new.bias[:n_below] = b[0] - log_ratio
        new.bias[n_below + n :] = b[-1] - log_ratio
        new.train(old.training)
        setattr(self.classifier, f"conv_{len(self.feature_extractor)}", new)
        self._set_bins(
            self.bin_start - n_below * self.bin_width, self.bin_width, n + n_below + n_above
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict age in years, shape (n, 1), from volumes of shape (n, c, i, j, k)."""
        if self.output == "soft_label":
            probs = self.log_probs(x).exp()
            return (probs * self.bin_centers.to(probs.dtype)).sum(dim=1, keepdim=True)
        return self.output_layer(self.classifier(self.feature_extractor(x)).flatten(1))
