"""The ``train`` section of the configuration: hyper-parameters of one base model (METHODS §3)."""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from brainage.errors import ConfigError
from brainage.models import MODELS, check_model_params
from brainage.schema import Section

#: ``train.model_params`` when none are given, per architecture (measured for small cohorts:
#: dropout 0.2 rather than the paper's 0.5 for the Hofmann CNN, METHODS §3).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"hofmann": {"dropout": 0.2}}


class TrainConfig(Section):
    """Training hyper-parameters of one base model.

    Defaults are tuned for small cohorts on a CPU (METHODS §3, "small cohorts"): the Hofmann CNN
    with BatchNorm, standardised targets, AdamW with weight decay, a cosine learning-rate schedule,
    flip/affine augmentation and early stopping on validation MAE. ``TrainConfig.paper()`` gives the
    configuration of paper 001 (no BatchNorm, Adam lr 5e-4, raw-age MSE, no augmentation).

    Attributes
    ----------
    model : str
        Registered architecture: ``"hofmann"`` (paper 001), ``"resnet"`` (3D ResNet, papers
        000/002/004) or ``"sfcn"`` (Peng et al. 2021; ``model_params.output: soft_label`` for
        the paper's age bins, which requires ``loss: kl``).
    model_params : dict
        Keyword arguments of the architecture; when not given, :data:`MODEL_DEFAULTS` of it.
    resolution_mm : float
        Input grid resolution in mm (the crop box of :func:`brainage.space.template_grid`).
    epochs : int
        Maximum number of epochs.
    patience : int
        Early stopping: stop after this many epochs without a better validation MAE.
    batch_size : int
    lr : float
        Peak learning rate.
    weight_decay : float
        Decoupled weight decay (AdamW).
    schedule : {"cosine", "constant"}
    loss : {"mse", "mae", "kl"}
        ``"mse"``/``"mae"``: on the (standardised) age of a model with one output neuron.
        ``"kl"``: KL(soft label ‖ predicted bin distribution) of a soft-label model (one that
        has ``log_probs``, e.g. ``sfcn`` with ``output: soft_label``), Peng et al. 2021; the
        only loss allowed for such a model.
    soft_label_sigma : float
        Standard deviation of the Gaussian soft label around each age, years (``loss: kl``;
        paper: 1). The bins are widened, never narrowed, until every training age lies ≥ 2σ
        inside them (see :func:`brainage.models.sfcn.covering_bins`).
    standardize_targets : bool
        Train on (age − mean) / sd and fold the scaling into the output layer afterwards.
        Ignored with ``loss: kl`` (the age bins are in years).
    init_from : str or None
        Fine-tune from this checkpoint instead of a random initialisation: a brainage
        ``model.pt``, a plain state dict, a dict with a ``state_dict`` key or a
        ``torch.nn.DataParallel`` state dict (leading ``module.`` stripped), read with
        ``torch.load(weights_only=True)`` (no code is unpickled; nothing is downloaded). It must
        fit ``model`` and ``model_params`` (e.g. the published UK Biobank SFCN,
        ``run_20190719_00_epoch_best_mae.p``: ``model: sfcn``, ``output: soft_label``, the
        default 40 bins of 1 year from 42, inputs 1 × 160 × 192 × 160 at 1 mm MNI,
        skull-stripped). Soft-label bins are then extended to the cohort's ages
        (:meth:`brainage.models.SFCN.extend_bins`); a regression output layer is taken to
        predict years and is rescaled to the (standardised) targets with its bias set to the
        training mean age. Made absolute when the configuration is read. Cached training
        results are keyed by the SHA-256 of the file's bytes.
    augment : list of str
        Names for :func:`brainage.data.build_augmentation` (``[]`` = none). Default flip, affine
        and elastic, chosen on the validation subjects of the IXI folds
        (``bench/bench_architectures.py``: pooled validation MAE 6.26 years with elastic
        deformation against 6.74 without, 6.44 against 7.25 over the last 10 epochs; better in 4
        of 5 folds; about 1.4× the training time). That comparison predates the conversion of
        the augmentation distances to mm (they were read as voxels, 4 × too strong at 4 mm) and
        should be repeated.
    device : str
        ``"auto"`` (CUDA, MPS, else CPU) or a torch device string.
    amp : bool
        Mixed precision on CUDA.
    channels_last : bool
        Train 3D CNNs in the channels-last memory format (``torch.channels_last_3d``): the same
        arithmetic in another order, 1.4× the volumes per second of the Hofmann CNN on one CPU
        thread at 4 mm (``bench/bench_train.py``). Models with 2D layers train as they are.
    phases : list of float
        Validation-MAE thresholds in years, decreasing (paper 000's training *phases*, METHODS
        §7): the first epoch whose validation MAE is ≤ each threshold saves its weights as
        ``phase-<k>.pt`` beside ``model.pt`` (k = 1, 2, … in this order) and ``model.json``
        lists them under ``phases``. A threshold the training never reaches gives no file.
    log_test_mae : bool
        Also log the MAE on the fold's test subjects after every epoch (``training_log.tsv``
        column ``test_mae``), for paper 000's last-epoch test MAE and MAE-vs-epoch curves. It
        is never used for any decision (early stopping and the best epoch use validation only).
    """

    section_path: ClassVar[str] = "train"

    model: str = "hofmann"
    model_params: dict[str, Any] = Field(default_factory=lambda: dict(MODEL_DEFAULTS["hofmann"]))
    resolution_mm: Annotated[float, Field(ge=0.5, le=16)] = 4.0
    epochs: Annotated[int, Field(ge=1)] = 60
    patience: Annotated[int, Field(ge=1)] = 30
    batch_size: Annotated[int, Field(ge=1)] = 8
    lr: Annotated[float, Field(gt=0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-3
    schedule: Literal["cosine", "constant"] = "cosine"
    loss: Literal["mse", "mae", "kl"] = "mse"
    soft_label_sigma: Annotated[float, Field(gt=0)] = 1.0
    standardize_targets: bool = True
    init_from: str | None = None
    augment: list[Literal["flip", "affine", "elastic"]] = Field(
        default_factory=lambda: ["flip", "affine", "elastic"]
    )
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    phases: list[Annotated[float, Field(gt=0)]] = Field(default_factory=list)
    log_test_mae: bool = False

    @field_validator("phases")
    @classmethod
    def _decreasing(cls, value: list[float]) -> list[float]:
        if list(value) != sorted(value, reverse=True) or len(set(value)) != len(value):
            raise ValueError("thresholds must be distinct and decreasing, e.g. [32, 22, 7.3]")
        return value

    @model_validator(mode="before")
    @classmethod
    def _architecture_defaults(cls, data: Any) -> Any:
        # model_params not given: the defaults brainage chose for that architecture
        if isinstance(data, dict) and "model_params" not in data:
            data = {
                **data,
                "model_params": dict(MODEL_DEFAULTS.get(data.get("model", "hofmann"), {})),
            }
        return data

    @field_validator("init_from")
    @classmethod
    def _absolute_init_from(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("'train.init_from' must be a file path or null; got ''")
        return os.path.abspath(os.path.expanduser(value))

    @model_validator(mode="after")
    def _check_model(self) -> TrainConfig:
        check_model_params(self.model, self.model_params)
        if getattr(MODELS[self.model], "closed_form", False):
            raise ConfigError(
                f"'train.model': {self.model!r} is fitted in closed form, not trained; add it "
                "to the ensemble with 'ensemble.learners' instead"
            )
        check = getattr(MODELS[self.model], "check_params", None)
        if check is not None:
            check(dict(self.model_params))
        soft = is_soft_label_model(self.model, self.model_params)
        if self.loss == "kl" and not soft:
            raise ConfigError(
                "'train.loss': 'kl' needs a soft-label model (one with log_probs over age bins, "
                "e.g. train.model: sfcn with train.model_params.output: soft_label); got model "
                f"{self.model!r} with model_params {dict(self.model_params)!r}"
            )
        if soft and self.loss != "kl":
            raise ConfigError(
                f"'train.loss' must be 'kl' for the soft-label model {self.model!r} (its output "
                f"is a distribution over age bins); got {self.loss!r}"
            )
        return self

    @classmethod
    def paper(cls) -> TrainConfig:
        """Return the plain configuration of paper 001 (Hofmann et al. 2021)."""
        return cls(
            model_params={"batch_norm": False},
            lr=5e-4,
            weight_decay=0.0,
            schedule="constant",
            standardize_targets=False,
            augment=[],
        )


def is_soft_label_model(name: str, params: dict | None) -> bool:
    """Whether architecture ``name`` with ``params`` predicts a distribution over age bins.

    A model class is soft-label when it has ``log_probs``; one that has an output switch says
    which through its ``is_soft_label(params)`` (``SFCN``: ``output: soft_label``).
    """
    cls = MODELS[name]
    if not callable(getattr(cls, "log_probs", None)):
        return False
    switch = getattr(cls, "is_soft_label", None)
    return True if switch is None else bool(switch(dict(params or {})))
