"""Parameters of the ``stats`` stage: voxelwise tests and brain-age-gap analyses (METHODS §10)."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from brainage.schema import Section

#: Built-in voxelwise analyses (see :data:`brainage.stats.maps.ANALYSES`).
BUILTIN_ANALYSES = ("one_sample", "young_old", "gap")


class StatsContrast(Section):
    """A user contrast on signed relevance maps from a cohort column (paper 001: diabetes).

    Parameters
    ----------
    column : str
        Cohort column (``participants.tsv``). Binary (or two ``levels`` of a categorical
        column): two-sample test, ``levels[1]`` minus ``levels[0]`` (default: sorted levels).
        Numeric: the slope of relevance on it.
    name : str, optional
        Name of the test in file names (default: the column); letters and digits.
    levels : list of str, optional
        The two levels compared.
    covariates : list of str
        Nuisance columns (Freedman–Lane): cohort columns, ``age`` and ``age2`` (its square).
    min_age, max_age : float, optional
        Only subjects in this age range (years).
    """

    section_path: ClassVar[str] = "stats.contrasts"
    column: str
    name: str | None = None
    levels: list[str] | None = None
    covariates: list[str] = Field(default_factory=lambda: ["age"])
    min_age: float | None = None
    max_age: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data):
        if (
            isinstance(data, dict)
            and data.get("name") is None
            and isinstance(data.get("column"), str)
        ):
            data = {**data, "name": re.sub(r"[^A-Za-z0-9]", "", data["column"]) or "contrast"}
        return data

    @field_validator("levels")
    @classmethod
    def _two_levels(cls, v):
        if v is not None and len(v) != 2:
            raise ValueError("must name exactly two levels")
        return v

    @model_validator(mode="after")
    def _check(self) -> StatsContrast:
        if not re.fullmatch(r"[A-Za-z0-9]+", self.name):
            raise ValueError(f"'name' must be letters and digits; got {self.name!r}")
        if self.name in BUILTIN_ANALYSES:
            raise ValueError(f"'name' {self.name!r} is a built-in analysis; choose another")
        if self.column in self.covariates:
            raise ValueError(f"{self.column!r} is both the tested column and a covariate")
        return self


class StatsConfig(Section):
    """Voxelwise permutation tests on relevance maps and brain-age-gap analyses (METHODS §10).

    Parameters
    ----------
    analyses : list of {"one_sample", "young_old", "gap"}
        ``one_sample``: is |relevance| above each subject's whole-brain mean (sign flips on
        |R| / mean|R| − 1)? ``young_old``: signed maps of subjects ≤ ``young_max`` vs. ≥
        ``old_min`` years. ``gap``: the brain-age gap as regressor with age and age² as
        covariates in subjects ≥ ``gap_min_age``. An analysis the cohort cannot support (too few
        subjects in a group) is skipped with a note in its record.
    contrasts : list of StatsContrast
        User contrasts from cohort columns, e.g. ``[{column: sex}]``.
    signed : {"centred", "scaled"}
        Signed maps (``young_old``, ``gap``, contrasts) are divided by each subject's mean
        |relevance|; ``centred`` (default) first subtracts the subject's mean relevance over the
        brain. Signed relevance sums to about the prediction minus a reference, so uncentred
        maps of older (or higher-gap) subjects are higher everywhere and a test on them mostly
        restates the prediction; centred maps test where relevance is *redistributed*.
    methods : list of str, optional
        Relevance methods tested (default: the first of ``explain.methods``).
    n_perm : int
        Random permutations / sign flips (paper 001 and FSL: 5,000).
    tfce_e, tfce_h : float
        TFCE exponents (FSL volumes: E 0.5, H 2).
    connectivity : {6, 18, 26}
        TFCE and cluster neighbourhood (FSL: 26).
    alpha : float
        FWE level of the cluster tables and the figures; also the Bonferroni level of the
        sliding-window correlations.
    blocks : {"fold", "none"}
        Exchangeability blocks: with cross-fitting, permute within outer folds (each fold's maps
        come from its own models).
    young_max, old_min, gap_min_age : float
        Years.
    atlas : str
        Atlas that labels the cluster peaks.
    covariates : list of str, optional
        Cohort columns related to the brain-age gap (paper 001 Fig. 7). Default: every numeric
        or binary column except ``participant_id`` and ``age``.
    window_width, window_step : float
        Sliding age windows of the gap correlations, years (paper 001: width 10).
    window_min_subjects : int
        Windows with fewer subjects (or, for a binary covariate, fewer than 2 per level) get no
        correlation.
    """

    section_path: ClassVar[str] = "stats"
    analyses: list[Literal["one_sample", "young_old", "gap"]] = Field(
        default_factory=lambda: ["one_sample", "young_old", "gap"]
    )
    contrasts: list[StatsContrast] = Field(default_factory=list)
    signed: Literal["centred", "scaled"] = "centred"
    methods: list[str] | None = None
    n_perm: Annotated[int, Field(ge=1)] = 1000
    tfce_e: Annotated[float, Field(gt=0)] = 0.5
    tfce_h: Annotated[float, Field(gt=0)] = 2.0
    connectivity: Literal[6, 18, 26] = 26
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    blocks: Literal["fold", "none"] = "fold"
    young_max: float = 40.0
    old_min: float = 60.0
    gap_min_age: float = 50.0
    atlas: str = "harvard_oxford"
    covariates: list[str] | None = None
    window_width: Annotated[float, Field(gt=0)] = 10.0
    window_step: Annotated[float, Field(gt=0)] = 2.5
    window_min_subjects: Annotated[int, Field(ge=4)] = 10

    @field_validator("atlas")
    @classmethod
    def _atlas(cls, v):
        from brainage.atlas import get_atlas_spec

        return get_atlas_spec(v).name

    @model_validator(mode="after")
    def _unique_contrasts(self) -> StatsConfig:
        names = [c.name for c in self.contrasts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"contrast names must be unique; repeated: {', '.join(dupes)}")
        return self

    def tests(self) -> list[str]:
        """Names of the voxelwise tests: the built-in analyses, then the contrasts."""
        return [*self.analyses, *(c.name for c in self.contrasts)]

    def contrast(self, name: str) -> StatsContrast | None:
        """Return the user contrast called ``name`` (None for a built-in analysis)."""
        return next((c for c in self.contrasts if c.name == name), None)
