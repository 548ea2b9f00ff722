"""The run layout: the one place that builds and parses every output path of a run folder.

Writers, the report, the stages and the tests ask a :class:`RunLayout` where a file goes; nothing
else builds output paths with f-strings or parses them with regular expressions. Entity values are
BIDS labels (letters and digits only): ``res-2``, ``res-1p5``, ``method-guidedbackprop``,
``atlas-harvardoxford``, ``desc-lrpepsilongammabox``.

Layout of ``OUT``, a BIDS derivative dataset (the layout of fMRIPrep: subject folders at the
root; what BIDS does not cover is listed in ``.bidsignore``, see :meth:`RunLayout.bidsignore`)::

    dataset_description.json, README, .bidsignore
    config.yaml, provenance.json, logs/brainage.log
    cohort.tsv, splits.tsv, failures.tsv, qc.tsv     every TSV with a JSON data dictionary
    sub-<id>/anat/…                  preprocessed scans, sidecars (:meth:`RunLayout.preproc`)
    sub-<id>/figures/sub-<id>_desc-qc_T1w.png  QC picture
    models/[fold-<k>/]seed-<n>/               model.pt, model.json, training_log.tsv, unoise.pt
    models/[fold-<k>/]space-<tpl>_res-<r>_desc-trainingmean_T1w.nii.gz   reference image
    predictions.tsv, metrics.tsv, ensemble.json, bias_correction.json
    explain/method-<m>/[seed-<n>/]sub-<id>_space-<tpl>_res-<r>_desc-<m>_relevance.nii.gz
    population/method-<m>_space-<tpl>_res-<r>_{stat-mean,desc-top10}_relevance.nii.gz
    regions/method-<m>_atlas-<a>_regions.tsv
    population/method-<m>_group-<g>_…_stat-mean_relevance.nii.gz   subgroup maps (paper 004)
    regions/method-<m>_group-<g>_atlas-<a>_regions.tsv, method-<m>_subgroups.json
    regions/method-<m>_{stability,ranks}.tsv, regions/method-all_{stability,ranks}.tsv
    phases/phase-<k>_method-<m>_…_stat-mean_relevance.nii.gz, phases/phases.tsv   (paper 000)
    stats/method-<m>_test-<t>_<space>_stat-<s>_statmap.nii.gz, …_clusters.tsv, …_summary.json
    stats/gap_windows.tsv, gap_models.tsv, gap_summary.json   brain-age gap vs. covariates
    evaluation/xai.tsv, lesions.tsv, method-<m>_xai.tsv, randomisation/method-<m>.tsv,
    evaluation/truth/sub-<id>_desc-<effect>_mask.nii.gz
    records/<stage>/<item>.json               one record per computed item (the completion marker)
    report.html

Work files that can be deleted without losing results (stacked model inputs, training
checkpoints, the native-space preprocessing cache) are outside the derivative: in ``--work-dir``,
by default the folder ``<OUT>_work`` beside ``OUT`` (fMRIPrep's convention of a separate work
directory).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from brainage.errors import ConfigError, InputError

#: Run-level files of ``OUT`` that BIDS does not cover (listed in ``.bidsignore``, each TSV with
#: its JSON data dictionary).
RUN_FILES = (
    "config.yaml",
    "provenance.json",
    "cohort.tsv",
    "splits.tsv",
    "failures.tsv",
    "qc.tsv",
    "predictions.tsv",
    "metrics.tsv",
    "ensemble.json",
    "bias_correction.json",
    "report.html",
)

#: Run-level folders of ``OUT`` that BIDS does not cover (listed in ``.bidsignore``).
RUN_FOLDERS = (
    "models", "explain", "population", "regions", "phases", "stats", "evaluation", "records",
    "logs",
)  # fmt: skip

#: Template space of every map (MNI152 2009a, symmetric, non-linear; nilearn's template).
TEMPLATE_SPACE = "MNI152NLin2009aSym"

_ENTITY = re.compile(r"(?P<key>[a-z]+)-(?P<value>[A-Za-z0-9]+)")


def label(value: str) -> str:
    """BIDS label of a name: letters and digits only (``"guided_backprop"`` → ``"guidedbackprop"``).

    Raises
    ------
    ConfigError
        Nothing is left.
    """
    out = re.sub(r"[^A-Za-z0-9]", "", str(value))
    if not out:
        raise ConfigError(f"{value!r} has no letters or digits to name a file with")
    return out


def res_label(resolution_mm: float) -> str:
    """BIDS ``res`` label of a voxel size in mm: ``2.0`` → ``"2"``, ``1.5`` → ``"1p5"``."""
    return f"{float(resolution_mm):g}".replace(".", "p")


def subject_label(participant_id: str) -> str:
    """Return the BIDS subject folder name ``sub-<label>`` of a participant id or scan key.

    A scan key's session is dropped (``"sub-01_ses-2"`` → ``"sub-01"``, :mod:`brainage.io.scans`).
    Ids without the ``sub-`` prefix get it; characters that BIDS labels do not allow
    (anything but letters and digits) are dropped, e.g. ``"IXI_012"`` → ``"sub-IXI012"``.

    Raises
    ------
    InputError
        When no letter or digit is left.
    """
    from brainage.io.scans import subject_of_key

    pid = subject_of_key(str(participant_id).strip())
    raw = pid[4:] if pid.startswith("sub-") else pid
    lab = re.sub(r"[^A-Za-z0-9]", "", raw)
    if not lab:
        raise InputError(
            "participant_id has no letters or digits to name its folder",
            "use BIDS-like ids such as sub-001",
            pid,
        )
    return f"sub-{lab}"


def scan_names(key: str) -> tuple[str, str | None, str]:
    """BIDS names of a scan key (:mod:`brainage.io.scans`).

    Returns
    -------
    subject : str
        ``sub-<label>`` (:func:`subject_label`).
    session : str or None
        ``ses-<label>`` (letters and digits only), None without a session.
    prefix : str
        File-name prefix ``sub-<label>[_ses-<label>]``.

    Raises
    ------
    InputError
        A participant or session label without letters or digits.
    """
    from brainage.io.scans import split_key

    pid, ses = split_key(key)
    sub = subject_label(pid)
    if ses is None:
        return sub, None, sub
    lab = re.sub(r"[^A-Za-z0-9]", "", ses[4:])
    if not lab:
        raise InputError(
            "session_id has no letters or digits to name its folder",
            "use BIDS session labels such as ses-1",
            str(key),
        )
    return sub, f"ses-{lab}", f"{sub}_ses-{lab}"


def parse_entities(path: str | Path) -> dict[str, str]:
    """Entities of a BIDS-like file name, plus its ``suffix`` and ``extension``.

    ``"sub-01_space-X_res-2_desc-lrp_relevance.nii.gz"`` →
    ``{"sub": "01", "space": "X", "res": "2", "desc": "lrp", "suffix": "relevance",
    "extension": ".nii.gz"}``.
    """
    name = Path(path).name
    stem, dot, ext = name.partition(".")
    parts = stem.split("_")
    out: dict[str, str] = {}
    for part in parts[:-1]:
        m = _ENTITY.fullmatch(part)
        if m:
            out[m["key"]] = m["value"]
    last = parts[-1]
    m = _ENTITY.fullmatch(last)
    if m:
        out[m["key"]] = m["value"]
    else:
        out["suffix"] = last
    out["extension"] = dot + ext if dot else ""
    return out


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run folder.

    Parameters
    ----------
    root : Path
        The run folder ``OUT`` (absolute).
    resolution_mm : float
        Grid of the model inputs and the relevance maps (``train.resolution_mm``).
    work_dir : Path, optional
        Folder for caches that can be deleted without losing results (``--work-dir``; e.g. a
        fast local disk on a cluster node). Default ``<OUT>_work``, beside ``OUT`` and so
        outside the BIDS derivative.
    """

    root: Path
    resolution_mm: float = 4.0
    work_dir: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())
        if self.work_dir is not None:
            object.__setattr__(self, "work_dir", Path(self.work_dir).expanduser().resolve())

    # ------------------------------------------------------------------ run-level files
    @property
    def config(self) -> Path:
        """``OUT/config.yaml``: the resolved configuration."""
        return self.root / "config.yaml"

    def file(self, name: str) -> Path:
        """Return a run-level file by name (``"predictions.tsv"``, ``"splits.tsv"``, …)."""
        known = {
            *RUN_FILES,
            "dataset_description.json",
            "README",
            ".bidsignore",
            "predictions.json",
        }
        if name not in known:
            raise ConfigError(f"no run-level file {name!r}; known: {', '.join(sorted(known))}")
        return self.root / name

    @property
    def space(self) -> str:
        """``space-<tpl>_res-<r>`` of the model grid."""
        return f"space-{TEMPLATE_SPACE}_res-{res_label(self.resolution_mm)}"

    # ------------------------------------------------------------------ preprocessing
    def preproc(self, participant_id: str, resolution_mm: float, register: str) -> dict[str, Path]:
        """Output paths of one scan's preprocessing (fMRIPrep layout).

        ``OUT/sub-<id>/[ses-<id>/]anat/…`` and ``OUT/sub-<id>/figures/…``; ``participant_id`` is
        a scan key (:mod:`brainage.io.scans`).

        Returns
        -------
        dict of str to Path
            ``folder``, ``preproc`` (model input), ``mask``, ``xfm`` / ``inverse_xfm`` (ANTs
            ``.mat``, ``.h5`` for SyN), ``qc_png``, ``sidecar``.
        """
        sub, ses, pre = scan_names(participant_id)
        folder = self.root / sub / (ses or "") / "anat"
        space = f"space-{TEMPLATE_SPACE}_res-{res_label(resolution_mm)}"
        ext = "h5" if register == "syn" else "mat"
        return {
            "folder": folder,
            "preproc": folder / f"{pre}_{space}_desc-preproc_T1w.nii.gz",
            "mask": folder / f"{pre}_{space}_desc-brain_mask.nii.gz",
            "xfm": folder / f"{pre}_from-T1w_to-{TEMPLATE_SPACE}_mode-image_xfm.{ext}",
            "inverse_xfm": folder / f"{pre}_from-{TEMPLATE_SPACE}_to-T1w_mode-image_xfm.{ext}",
            "qc_png": self.root / sub / "figures" / f"{pre}_desc-qc_T1w.png",
            "sidecar": folder / f"{pre}_{space}_desc-preproc_T1w.json",
            "mask_sidecar": folder / f"{pre}_{space}_desc-brain_mask.json",
        }

    def preproc_modality(
        self, participant_id: str, resolution_mm: float, modality: str
    ) -> dict[str, Path]:
        """Output paths of a scan's further modality (``FLAIR``, ``T2w``; fMRIPrep layout).

        Returns
        -------
        dict of str to Path
            ``preproc`` (``…_space-<tpl>_res-<r>_desc-preproc_<modality>.nii.gz``, the model's
            extra channel), ``sidecar`` (its JSON), ``xfm`` (``…_from-<modality>_to-T1w_
            mode-image_xfm.mat``: the rigid transform onto the scan's T1w).
        """
        sub, ses, pre = scan_names(participant_id)
        folder = self.root / sub / (ses or "") / "anat"
        space = f"space-{TEMPLATE_SPACE}_res-{res_label(resolution_mm)}"
        return {
            "preproc": folder / f"{pre}_{space}_desc-preproc_{modality}.nii.gz",
            "sidecar": folder / f"{pre}_{space}_desc-preproc_{modality}.json",
            "xfm": folder / f"{pre}_from-{modality}_to-T1w_mode-image_xfm.mat",
        }

    @property
    def qc_table(self) -> Path:
        """``OUT/qc.tsv``: registration quality and QC picture of every subject."""
        return self.root / "qc.tsv"

    def bidsignore(self) -> list[str]:
        """Lines of ``OUT/.bidsignore``: what the run writes that BIDS does not cover.

        The run-level files and folders (each TSV with its ``.json`` data dictionary), the QC
        figures and transforms (as fMRIPrep does: ``figures``, ``*_xfm.*``) and the HTML report.
        """
        files = []
        for name in RUN_FILES:
            files.append(f"/{name}")
            if name.endswith(".tsv"):
                files.append(f"/{name[:-4]}.json")
        # folders without a trailing slash: bids-validator 2+ matches ``/models`` but not
        # ``/models/`` against the folder itself
        return [*files, *(f"/{d}" for d in RUN_FOLDERS), "**/figures", "*_xfm.*", "*.html"]

    # ------------------------------------------------------------------ models
    def model_dir(self, seed: int | str, fold: int | None = None) -> Path:
        """Folder of a base model: ``OUT/models/[fold-<k>/]seed-<n>`` (``fold``: cross-fitting).

        ``seed`` is a CNN seed or a base-model name (``"seed-3"``, ``"voxelridge"``).
        """
        name = f"seed-{int(seed)}" if isinstance(seed, int) else str(seed)
        return self._fold_dir(fold) / name

    def _fold_dir(self, fold: int | None) -> Path:
        return self.root / "models" if fold is None else self.root / "models" / f"fold-{int(fold)}"

    def model_dirs(self) -> list[Path]:
        """Existing base-model folders (with ``model.json``), sorted by fold and seed."""
        found = [p.parent for p in (self.root / "models").glob("seed-*/model.json")]
        found += [p.parent for p in (self.root / "models").glob("fold-*/seed-*/model.json")]

        def order(p: Path) -> tuple[int, int]:
            fold = int(p.parent.name.split("-")[1]) if p.parent.name.startswith("fold-") else 0
            return fold, int(p.name.split("-")[1])

        return sorted(found, key=order)

    def noise_model(self, seed: int | str, fold: int | None = None) -> Path:
        """3D U-Noise noise model of a base model: ``models/[fold-<k>/]seed-<n>/unoise.pt``."""
        return self.model_dir(seed, fold) / "unoise.pt"

    def reference(self, fold: int | None = None) -> Path:
        """Return the mean training image (reference brain) of a fold's models (model grid)."""
        return self._fold_dir(fold) / f"{self.space}_desc-trainingmean_T1w.nii.gz"

    # ------------------------------------------------------------------ relevance maps
    def relevance(
        self,
        method: str,
        participant_id: str,
        model: str | None = None,
        modality: str | None = None,
    ) -> Path:
        """Relevance map of one subject; ``model=None``: the ensemble map, ``"seed-0"``: one model.

        ``OUT/explain/method-<m>/[seed-<n>/]sub-<id>[_ses-<id>]_space-<tpl>_res-<r>_desc-<m>_relevance.nii.gz``
        is the map summed over the input channels; with several modalities, ``modality``
        (``"T1w"``, ``"FLAIR"``) names one channel's ensemble map, ``desc-<m><modality>``.
        """
        folder = self.root / "explain" / f"method-{label(method)}"
        if model is not None:
            folder = folder / model
        pre = scan_names(participant_id)[2]
        desc = label(method) + (modality or "")
        return folder / f"{pre}_{self.space}_desc-{desc}_relevance.nii.gz"

    def population(self, method: str, kind: str = "mean") -> Path:
        """Return a population map path: ``kind="mean"`` (``stat-mean``) or ``"top10"``."""
        entity = {"mean": "stat-mean", "top10": "desc-top10"}.get(kind)
        if entity is None:
            raise ConfigError(f"'kind' must be 'mean' or 'top10'; got {kind!r}")
        name = f"method-{label(method)}_{self.space}_{entity}_relevance.nii.gz"
        return self.root / "population" / name

    def subgroup_map(self, method: str, group: str) -> Path:
        """Subgroup mean map: ``OUT/population/method-<m>_group-<g>_<space>_stat-mean_…``."""
        name = f"method-{label(method)}_group-{label(group)}_{self.space}_stat-mean_relevance"
        return self.root / "population" / f"{name}.nii.gz"

    def subgroup_regions(self, method: str, group: str, atlas: str) -> Path:
        """``OUT/regions/method-<m>_group-<g>_atlas-<a>_regions.tsv``."""
        name = f"method-{label(method)}_group-{label(group)}_atlas-{label(atlas)}_regions.tsv"
        return self.root / "regions" / name

    def region_summary(self, method: str, kind: str) -> Path:
        """``OUT/regions/method-<m>_<kind>.{tsv,json}``: ``subgroups`` (json), ``stability``."""
        ext = "json" if kind == "subgroups" else "tsv"
        return self.root / "regions" / f"method-{label(method)}_{kind}.{ext}"

    def regions(self, method: str, atlas: str) -> Path:
        """Region table: ``OUT/regions/method-<m>_atlas-<a>_regions.tsv``."""
        return self.root / "regions" / f"method-{label(method)}_atlas-{label(atlas)}_regions.tsv"

    def phase_map(self, phase: int, method: str) -> Path:
        """Test-set mean map at a training phase (paper 000): ``OUT/phases/phase-<k>_method-…``.

        ``OUT/phases/phase-<k>_method-<m>_<space>_stat-mean_relevance.nii.gz``
        """
        name = f"phase-{int(phase)}_method-{label(method)}_{self.space}_stat-mean_relevance"
        return self.root / "phases" / f"{name}.nii.gz"

    @property
    def phase_table(self) -> Path:
        """``OUT/phases/phases.tsv``: the phase checkpoints of every base model."""
        return self.root / "phases" / "phases.tsv"

    # ------------------------------------------------------------------ statistics
    def stats_map(self, method: str, analysis: str, stat: str) -> Path:
        """Statistic map: ``OUT/stats/method-<m>_test-<a>_<space>_stat-<s>_statmap.nii.gz``.

        ``stat``: ``t`` (or ``F``), ``tfce``, ``pfwe`` (TFCE FWE p), ``puncorr`` (TFCE p).
        """
        name = f"method-{label(method)}_test-{label(analysis)}_{self.space}_stat-{label(stat)}"
        return self.root / "stats" / f"{name}_statmap.nii.gz"

    def stats_table(self, method: str, analysis: str, kind: str = "clusters") -> Path:
        """``OUT/stats/method-<m>_test-<a>_<kind>``: clusters / peaks (TSV), summary (JSON)."""
        ext = "json" if kind == "summary" else "tsv"
        return self.root / "stats" / f"method-{label(method)}_test-{label(analysis)}_{kind}.{ext}"

    def stats_gap(self, kind: str) -> Path:
        """Brain-age gap vs. covariates: ``OUT/stats/gap_<kind>.tsv`` (``summary``: ``.json``)."""
        ext = "json" if kind == "summary" else "tsv"
        return self.root / "stats" / f"gap_{kind}.{ext}"

    # ------------------------------------------------------------------ evaluation
    @property
    def xai_table(self) -> Path:
        """``OUT/evaluation/xai.tsv``: one row per explanation method."""
        return self.root / "evaluation" / "xai.tsv"

    def xai_row(self, method: str) -> Path:
        """One method's row of the xai table (written by its ``evaluate`` item)."""
        return self.root / "evaluation" / f"method-{label(method)}_xai.tsv"

    def lesion_row(self, method: str) -> Path:
        """One method's lesion-test summary (simulated cohorts with lesions)."""
        return self.root / "evaluation" / f"method-{label(method)}_lesions.json"

    @property
    def lesion_subjects(self) -> Path:
        """``OUT/evaluation/lesions_subjects.tsv``: per-subject rows of the lesion test."""
        return self.root / "evaluation" / "lesions_subjects.tsv"

    def folder(self, name: str) -> Path:
        """Return a top-level folder of the run: ``explain``, ``population``, ``regions``, …."""
        known = ("preproc", "models", "explain", "population", "regions", "evaluation", "records")
        if name not in known:
            raise ConfigError(f"no run folder {name!r}; known: {', '.join(known)}")
        return self.root / name

    @property
    def lesion_table(self) -> Path:
        """``OUT/evaluation/lesions.tsv``."""
        return self.root / "evaluation" / "lesions.tsv"

    def faithfulness(self, method: str) -> Path:
        """Mean perturbation curves of one method (``evaluation/faithfulness/…_curves.tsv``)."""
        return self.root / "evaluation" / "faithfulness" / f"method-{label(method)}_curves.tsv"

    def reliance(self, method: str) -> Path:
        """Per-region relevance and reliance of one method (``…/faithfulness/…_reliance.tsv``)."""
        return self.root / "evaluation" / "faithfulness" / f"method-{label(method)}_reliance.tsv"

    def region_truth(self, method: str) -> Path:
        """Per-region relevance against the true per-region effect (simulated cohorts)."""
        return self.root / "evaluation" / "regions" / f"method-{label(method)}_truth.tsv"

    def method_agreement(self) -> Path:
        """Rank correlation of the methods' region tables (``evaluation/method_agreement.tsv``)."""
        return self.root / "evaluation" / "method_agreement.tsv"

    def randomisation(self, method: str) -> Path:
        """Cascading-randomisation steps of one method."""
        return self.root / "evaluation" / "randomisation" / f"method-{label(method)}.tsv"

    def truth(self, participant_id: str, effect: str = "ageeffect") -> Path:
        """Ground-truth mask (``"change"``: the change map) of a simulated subject, model grid."""
        pre = scan_names(participant_id)[2]
        suffix = "map" if effect == "change" else "mask"
        return self.root / "evaluation" / "truth" / f"{pre}_desc-{label(effect)}_{suffix}.nii.gz"

    # ------------------------------------------------------------------ engine
    def record(self, stage: str, item: str) -> Path:
        """Record of one computed item: ``OUT/records/<stage>/<item>.json``."""
        safe = item.replace("/", "__")
        return self.root / "records" / stage / f"{safe}.json"

    def records(self, stage: str) -> list[Path]:
        """Existing records of ``stage``."""
        return sorted((self.root / "records" / stage).glob("*.json"))

    @property
    def work(self) -> Path:
        """Deletable caches (model inputs, checkpoints): ``--work-dir`` or ``<OUT>_work``."""
        if self.work_dir is not None:
            return self.work_dir
        return self.root.parent / f"{self.root.name}_work"

    def volumes(self) -> Path:
        """Stacked model inputs, shape (n, c, i, j, k), float32 (``.npy``, memory-mapped)."""
        return self.work / f"volumes_res-{res_label(self.resolution_mm)}.npy"

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the run folder (for records and tables)."""
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.root))
        except ValueError:
            return str(p)

    def absolute(self, relative: str | Path) -> Path:
        """Inverse of :meth:`relative`."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def method_of(self, path: str | Path, methods) -> str | None:
        """Return the registered method name (among ``methods``) whose label a file name carries."""
        ent = parse_entities(path)
        lab = ent.get("method") or ent.get("desc")
        for m in methods:
            if label(m) == lab:
                return m
        return None
