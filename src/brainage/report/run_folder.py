"""Reading the files of a run folder ``OUT`` for the report.

Only ``predictions.tsv`` is required. Every other file is optional: when it is missing its field
is None; when it exists but cannot be read, its field is None and the reason is appended to
``RunFolder.problems`` (the report shows it instead of failing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from brainage.ensemble import regression_metrics
from brainage.errors import InputError
from brainage.io.layout import label, parse_entities
from brainage.io.scans import read_tsv as scan_table
from brainage.io.scans import scan_key


@dataclass
class RunFolder:
    """The contents of a run folder, as far as they exist.

    Attributes
    ----------
    root : Path
    predictions : pandas.DataFrame
        ``predictions.tsv`` (ages in years; ``participant_id`` as str).
    cohort, failures, qc, metrics : pandas.DataFrame or None
    bias : dict or None
        ``bias_correction.json``.
    ensemble : dict or None
        ``ensemble.json`` (folds, heads, the calibrated interval and its scores).
    provenance, description : dict or None
        ``provenance.json`` and ``dataset_description.json``.
    config_text : str or None
        ``config.yaml`` as text (or the config of ``dataset_description.json`` as YAML).
    training_logs : dict of (str, str) to pandas.DataFrame
        ``(condition, "seed-<n>") → training_log.tsv``; the condition is ``fold-<k>`` in a
        cross-fitted run.
    fold_metrics : pandas.DataFrame or None
        The per-fold rows of ``metrics.tsv`` (cross-fitted runs; ``metrics`` keeps the rows of
        every subject, ``fold`` = all).
    population : dict of str to dict
        ``method → {"mean": Path, "top10": Path, "res": str, "space": str}`` (keys present only
        when the file exists).
    regions : dict of str to dict of str to pandas.DataFrame
        ``method → atlas → region table``.
    xai : pandas.DataFrame or None
        ``evaluation/xai.tsv``: one row per explanation method (ground-truth scores, the
        model-randomisation sanity check, seed agreement; see :mod:`brainage.evaluate`).
    lesions : pandas.DataFrame or None
        ``evaluation/lesions.tsv``: one row per method (lesion analysis of paper 003).
    subject_maps : dict of str to dict of str to Path
        ``method → scan key ("sub-<id>[_ses-<id>]") → ensemble relevance map`` in template space
        (``explain/method-<m>/sub-<id>_space-…_res-…_desc-<m>_relevance.nii.gz``; the maps of
        single base models under ``seed-<n>/`` are not listed).
    truth : dict of str to Path
        ``"sub-<id>" → evaluation/truth/sub-<id>_desc-ageeffect_mask.nii.gz`` (simulated
        cohorts only: where age acts, on the grid of the relevance maps).
    problems : list of str
        Files that exist but could not be read, with the reason.
    """

    root: Path
    predictions: pd.DataFrame
    cohort: pd.DataFrame | None = None
    failures: pd.DataFrame | None = None
    qc: pd.DataFrame | None = None
    metrics: pd.DataFrame | None = None
    bias: dict | None = None
    provenance: dict | None = None
    description: dict | None = None
    config_text: str | None = None
    training_logs: dict = field(default_factory=dict)
    fold_metrics: pd.DataFrame | None = None
    ensemble: dict | None = None
    population: dict = field(default_factory=dict)
    regions: dict = field(default_factory=dict)
    xai: pd.DataFrame | None = None
    lesions: pd.DataFrame | None = None
    subject_maps: dict = field(default_factory=dict)
    truth: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)

    @property
    def methods(self) -> list[str]:
        """Explanation methods with a population map or a region table, sorted."""
        return sorted(set(self.population) | set(self.regions))

    @property
    def explained_methods(self) -> list[str]:
        """Methods with per-subject maps or a row in ``evaluation/xai.tsv``.

        In the order of ``xai.tsv``, then alphabetically.
        """
        listed = []
        if self.xai is not None:
            listed = [str(m) for m in self.xai["method"] if pd.notna(m)]
        rest = sorted(m for m in self.subject_maps if m not in listed)
        return list(dict.fromkeys(listed + rest))


def read_tsv(path) -> pd.DataFrame:
    """Read a brainage TSV (``n/a`` = missing; ``participant_id`` kept as text, scan keys joined).

    A longitudinal run's ``participant_id`` + ``session_id`` become one scan key
    (:func:`brainage.io.scans.read_tsv`).
    """
    return scan_table(path, na_values=["n/a", "N/A", "NA", ""], keep_default_na=False)


def _optional(run: RunFolder, path: Path, reader):
    if not path.exists():
        return None
    try:
        return reader(path)
    except Exception as exc:  # any unreadable file is reported, not fatal
        run.problems.append(f"{path.relative_to(run.root)}: {type(exc).__name__}: {exc}"[:300])
        return None


def _read_json(path: Path) -> dict:
    obj = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    return obj


def _require(frame: pd.DataFrame, columns, path: Path) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)} in {path.name}")
    return frame


def read_run_folder(out_dir) -> RunFolder:
    """Read the run folder ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Output folder of a brainage run (layout in DESIGN.md).

    Returns
    -------
    RunFolder

    Raises
    ------
    InputError
        ``out_dir`` or ``predictions.tsv`` is missing, or ``predictions.tsv`` lacks the columns
        ``participant_id``, ``age``, ``brain_age`` or ``split``.
    """
    root = Path(out_dir)
    if not root.is_dir():
        raise InputError(
            "run folder does not exist", "give the output folder of a run (--run DIR)", path=root
        )
    pred_path = root / "predictions.tsv"
    if not pred_path.exists():
        raise InputError(
            "predictions.tsv not found in the run folder",
            "run the predict stage first (brainage run / brainage predict)",
            path=root,
        )
    try:
        predictions = read_tsv(pred_path)
    except Exception as exc:
        raise InputError(f"cannot read predictions.tsv ({exc})", path=pred_path) from None
    needed = ["participant_id", "age", "brain_age", "split"]
    missing = [c for c in needed if c not in predictions.columns]
    if missing:
        raise InputError(
            f"predictions.tsv lacks the column(s) {', '.join(missing)}",
            "rerun the predict stage of this brainage version",
            path=pred_path,
        )
    for c in predictions.columns:
        if c == "age" or c.startswith("brain_age") or c == "uncertainty":
            predictions[c] = pd.to_numeric(predictions[c], errors="coerce")
    predictions["split"] = predictions["split"].astype(str)
    run = RunFolder(root=root, predictions=predictions)

    run.cohort = _optional(
        run, root / "cohort.tsv", lambda p: _require(read_tsv(p), ["participant_id"], p)
    )
    run.failures = _optional(run, root / "failures.tsv", read_tsv)
    run.qc = _optional(
        run,
        root / "qc.tsv",
        lambda p: _require(read_tsv(p), ["participant_id", "reg_quality"], p),
    )
    run.metrics = _optional(
        run, root / "metrics.tsv", lambda p: _require(read_tsv(p), ["model", "split", "mae"], p)
    )
    if run.metrics is not None and "fold" in run.metrics:  # cross-fitted: per-fold rows apart
        per_fold = run.metrics["fold"].astype(str) != "all"
        run.fold_metrics = run.metrics[per_fold].reset_index(drop=True)
        run.metrics = run.metrics[~per_fold].drop(columns="fold").reset_index(drop=True)
    run.bias = _optional(run, root / "bias_correction.json", _read_json)
    run.ensemble = _optional(run, root / "ensemble.json", _read_json)
    run.provenance = _optional(run, root / "provenance.json", _read_json)
    run.description = _optional(run, root / "dataset_description.json", _read_json)
    run.config_text = _optional(run, root / "config.yaml", lambda p: p.read_text(encoding="utf-8"))
    if run.config_text is None and run.description:
        config = (run.description.get("brainage") or {}).get("config")
        if config:
            import yaml

            run.config_text = yaml.safe_dump(config, sort_keys=False)

    logs = sorted(root.glob("models/seed-*/training_log.tsv"))
    logs += sorted(root.glob("models/fold-*/seed-*/training_log.tsv"))
    for log in logs:
        frame = _optional(run, log, lambda p: _require(read_tsv(p), ["epoch"], p))
        if frame is not None:
            fold = log.parent.parent.name
            condition = fold if fold.startswith("fold-") else "default"
            run.training_logs[(condition, log.parent.name)] = frame

    for path in sorted((root / "population").glob("method-*_relevance.nii*")):
        e = parse_entities(path)  # the run layout's parser, not a pattern of our own
        kind = "mean" if e.get("stat") == "mean" else "top10" if e.get("desc") == "top10" else None
        if kind is None or "method" not in e or e.get("suffix") != "relevance" or "group" in e:
            continue  # subgroup maps (``group-``) are read by the subgroup section
        entry = run.population.setdefault(_method(e["method"]), {})
        entry[kind] = path
        entry.setdefault("res", e.get("res", ""))
        entry.setdefault("space", e.get("space", ""))

    for path in sorted((root / "regions").glob("method-*_atlas-*_regions.tsv")):
        e = parse_entities(path)
        if "method" not in e or "atlas" not in e or e.get("suffix") != "regions" or "group" in e:
            continue
        table = _optional(
            run, path, lambda p: _require(read_tsv(p), ["region", "mean_relevance"], p)
        )
        if table is not None:
            run.regions.setdefault(_method(e["method"]), {})[_atlas(e["atlas"])] = table

    evaluation = root / "evaluation"
    run.xai = _optional(run, evaluation / "xai.tsv", lambda p: _require(read_tsv(p), ["method"], p))
    run.lesions = _optional(
        run, evaluation / "lesions.tsv", lambda p: _require(read_tsv(p), ["method"], p)
    )
    for folder in sorted((root / "explain").glob("method-*")):
        if not folder.is_dir():
            continue
        method = _method(folder.name[len("method-") :])
        for path in sorted(folder.glob("sub-*_relevance.nii*")):
            e = parse_entities(path)
            if e.get("desc") == label(method) and "sub" in e:
                key = scan_key(f"sub-{e['sub']}", e.get("ses"))
                run.subject_maps.setdefault(method, {})[key] = path
    for path in sorted((evaluation / "truth").glob("sub-*_desc-ageeffect_mask.nii*")):
        e = parse_entities(path)
        if "sub" in e and e.get("suffix") == "mask":
            run.truth.setdefault(f"sub-{e['sub']}", path)
    return run


def _method(lab: str) -> str:
    """Return the method name of a file-name label (``guidedbackprop`` → ``guided_backprop``)."""
    from brainage.explain import list_methods

    return next((m for m in list_methods() if label(m) == lab), lab)


def _atlas(lab: str) -> str:
    """Return the atlas name of a file-name label (``harvardoxford`` → ``harvard_oxford``)."""
    from brainage.atlas import available_atlases

    return next((a for a in available_atlases() if label(a) == lab), lab)


def metrics_from_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """Compute ``metrics.tsv``-like rows from ``predictions.tsv`` (subjects with known age).

    Only for run folders without ``metrics.tsv``; the scores are those of the predict stage
    (:func:`brainage.ensemble.regression_metrics`).

    Parameters
    ----------
    predictions : pandas.DataFrame
        Columns ``age``, ``split``, ``brain_age`` and optionally ``brain_age_corrected`` and
        ``brain_age_<model>`` (years).

    Returns
    -------
    pandas.DataFrame
        Columns ``model, split, n, mae, r, rmse``; models ``ensemble`` (``brain_age``),
        ``ensemble_corrected`` (``brain_age_corrected``) and ``<model>`` for ``brain_age_<model>``.
    """
    rows = []
    known = predictions[predictions["age"].notna()]
    for col in predictions.columns:
        model = column_to_model(col)
        if model is None:
            continue
        for split, part in known.groupby("split", sort=False):
            scores = regression_metrics(part["age"], part[col])  # the predict stage's rule
            if scores["n"] == 0:
                continue
            rows.append({"model": model, "split": split, **scores})
    return pd.DataFrame(rows, columns=["model", "split", "n", "mae", "r", "rmse"])


def column_to_model(column: str) -> str | None:
    """Map a prediction column to its model name in ``metrics.tsv`` (None if not a prediction).

    ``brain_age`` → ``ensemble``; ``brain_age_corrected`` → ``ensemble_corrected``;
    ``brain_age_<m>`` → ``<m>``; ``brain_age_gap`` → None.
    """
    if column == "brain_age":
        return "ensemble"
    if column == "brain_age_corrected":
        return "ensemble_corrected"
    if column == "brain_age_gap" or not column.startswith("brain_age_"):
        return None
    return column[len("brain_age_") :]
