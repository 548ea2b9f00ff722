import json
import re

import matplotlib
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.errors import InputError
from brainage.io.layout import RunLayout
from brainage.report import make_figures as mf
from brainage.report import metrics_from_predictions, read_run_folder, write_report
from brainage.space import TEMPLATE_SPACE, template_array, template_grid

matplotlib.use("Agg")

REGION_NAMES = ["Lateral_Ventricle_Zeta", "Hippocampus_Omega", "Thalamus_Kappa", "Cuneus_Rho"]


def _write_tsv(path, frame):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a")


#: Explained subjects of the fake run (test split) and the slice where their truth is largest.
XAI_SUBJECTS = ("sub-IXI040", "sub-IXI041")
TRUTH_PEAK_K = (25, 14)
#: Fake evaluation/xai.tsv: guided_backprop fails the randomisation check, lrp passes.
XAI_ROWS = {
    "guided_backprop": dict(
        n_subjects=2,
        mass_accuracy=0.123,
        mask_fraction=0.081,
        roc_auc=0.571,
        topk_precision=0.104,
        randomisation_spearman=0.83,
        passes_randomisation=False,
        seed_dice=0.31,
        aopc_morf=0.4,
        aopc_random=0.5,
        aopc_lerf=-0.2,
        aopc_morf_minus_random=-0.1,
        aopc_morf_minus_random_ci_low=-0.6,
        aopc_morf_minus_random_ci_high=0.4,
        faithfulness_n=12,
        max_sensitivity=0.31,
        region_roc_auc=0.62,
        population_region_roc_auc=0.66,
        region_effect_spearman=0.21,
        population_region_effect_spearman=0.25,
        region_n_effect=20,
        region_n_none=40,
    ),
    "lrp": dict(
        n_subjects=2,
        mass_accuracy=0.412,
        mask_fraction=0.081,
        roc_auc=0.876,
        topk_precision=0.377,
        randomisation_spearman=0.12,
        passes_randomisation=True,
        seed_dice=0.55,
        aopc_morf=3.1,
        aopc_random=0.5,
        aopc_lerf=-2.0,
        aopc_morf_minus_random=2.6,
        aopc_morf_minus_random_ci_low=1.2,
        aopc_morf_minus_random_ci_high=3.9,
        faithfulness_n=12,
        max_sensitivity=0.12,
        region_roc_auc=0.88,
        population_region_roc_auc=0.93,
        region_effect_spearman=0.61,
        population_region_effect_spearman=0.74,
        region_n_effect=20,
        region_n_none=40,
    ),
}
#: Fake evaluation/lesions.tsv: lrp relies on lesions (d > 0, p < 0.05), guided_backprop not.
LESION_ROWS = [
    dict(
        method="guided_backprop",
        n_subjects=9,
        n_excluded=3,
        min_lesion_voxels=30,
        mean_lesion_relevance=0.21,
        mean_expected_relevance=0.2,
        mean_difference=0.01,
        t=0.4,
        df=8,
        p=0.7,
        d=0.13,
        alternative="two-sided",
    ),
    dict(
        method="lrp",
        channel="FLAIR",  # a two-channel run; the other row predates the column (T1w)
        n_subjects=9,
        n_excluded=3,
        min_lesion_voxels=30,
        mean_lesion_relevance=0.93,
        mean_expected_relevance=0.31,
        mean_difference=0.62,
        t=5.1,
        df=8,
        p=0.00093,
        d=1.7,
        alternative="two-sided",
    ),
]


def truth_mask(res, peak_k, seed=0):
    """A ventricle-like ellipsoid on template_grid(res) whose largest axial slice is ``peak_k``."""
    grid = template_grid(res)
    ii, jj, kk = np.indices(grid.shape)
    c = np.array(grid.shape) / 2
    return ((ii - c[0]) / 6) ** 2 + ((jj - c[1] - seed) / 9) ** 2 + ((kk - peak_k) / 3.5) ** 2 <= 1


def add_fake_evaluation(out, res=4, seed=0, truth=True, lesions=True, xai_rows=None):
    """Write evaluation/xai.tsv, lesions.tsv, truth masks and per-subject maps into ``out``."""
    from brainage.evaluate import write_xai_table
    from brainage.io.layout import RunLayout

    rng = np.random.default_rng(seed)
    grid = template_grid(res)
    rows = XAI_ROWS if xai_rows is None else xai_rows
    write_xai_table(pd.DataFrame([{"method": m, **v} for m, v in rows.items()]), out)
    if lesions:
        _write_tsv(out / "evaluation" / "lesions.tsv", pd.DataFrame(LESION_ROWS))
    layout = RunLayout(out, res)
    effect = rng.uniform(0, 0.3, 30)
    for k, method in enumerate(rows):
        table = pd.DataFrame({
            "label": np.arange(1, 31), "region": [f"R{i}" for i in range(30)], "n_voxels": 50,
            "true_effect": effect,
            "has_effect": np.where(effect >= 0.05, "yes", np.where(effect < 0.01, "no", "partial")),
            "relevance": effect * (k + 1) + rng.uniform(0.01, 0.1, 30), "relevance_rank": 1,
            "atlas": "harvard_oxford"})  # fmt: skip
        _write_tsv(layout.region_truth(method), table)
    methods = list(rows)
    pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1 :]]
    _write_tsv(layout.method_agreement(), pd.DataFrame({
        "method_a": [a for a, _ in pairs], "method_b": [b for _, b in pairs],
        "spearman": 0.4, "n_regions": 30, "atlas": "aal"}))  # fmt: skip
    t1 = template_array("t1w", res)
    edges = np.sqrt(
        sum(g**2 for g in np.gradient(t1))
    )  # an edge detector: what a failing map shows
    for s, (pid, peak) in enumerate(zip(XAI_SUBJECTS, TRUTH_PEAK_K, strict=True)):
        mask = truth_mask(res, peak, seed=s)
        if truth:
            save = out / "evaluation" / "truth" / f"{pid}_desc-ageeffect_mask.nii.gz"
            save.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), grid.affine), str(save))
        maps = {
            "guided_backprop": edges * rng.uniform(0.8, 1.2) + rng.normal(0, 0.05, grid.shape),
            "lrp": 2.0 * mask - 0.4 * (t1 > 0.6 * t1.max()) + rng.normal(0, 0.1, grid.shape),
        }
        for method in rows:
            for model in (None, "seed-0"):
                path = RunLayout(out, res).relevance(method, pid, model)
                path.parent.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(maps[method].astype(np.float32), grid.affine), str(path))
    return out


def make_fake_run(out, full=True, seed=0, n=60, atlases=None, res=4, evaluation=True):
    """A small synthetic run folder (layout of DESIGN.md); returns the folder.

    ``atlases``: None → synthetic region tables with REGION_NAMES; or a list of real atlas names.
    ``evaluation``: also write evaluation/ (xai.tsv, lesions.tsv, truth) and per-subject maps.
    """
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    split = np.array(["train"] * (n - 22) + ["validation"] * 8 + ["test"] * 12 + ["predict"] * 2)
    age = rng.uniform(20, 86, n)
    age[split == "predict"] = np.nan
    pred = pd.DataFrame({"participant_id": [f"sub-IXI{i:03d}" for i in range(n)], "age": age})
    seeds = ["seed-0", "seed-1", "seed-2"]
    base = {}
    for s in seeds:
        # regression to the mean + noise, as an under-fitting model would do
        base[s] = 0.6 * np.nan_to_num(age, nan=50) + 20 + rng.normal(0, 6, n)
    ens = np.mean(list(base.values()), axis=0)
    pred["brain_age"] = ens
    pred["brain_age_corrected"] = (ens - 20) / 0.6
    pred["brain_age_gap"] = pred["brain_age_corrected"] - pred["age"]
    pred["uncertainty"] = rng.uniform(2, 6, n)
    pred["split"] = split
    for s in seeds:
        pred[f"brain_age_{s}"] = base[s]
    _write_tsv(out / "predictions.tsv", pred)
    if not full:
        return out

    cohort = pred[["participant_id", "age", "split"]].copy()
    cohort.insert(2, "sex", rng.choice(["F", "M"], n))
    _write_tsv(out / "cohort.tsv", cohort)
    metrics = metrics_from_predictions(pred)
    for sp in ("validation", "test"):
        y = pred.loc[pred["split"] == sp, "age"]
        mean_train = pred.loc[pred["split"] == "train", "age"].mean()
        metrics.loc[len(metrics)] = [
            "mean_age_baseline",
            sp,
            len(y),
            float(np.mean(np.abs(y - mean_train))),
            np.nan,
            np.nan,
        ]
    _write_tsv(out / "metrics.tsv", metrics)
    (out / "bias_correction.json").write_text(
        json.dumps(
            {
                "slope": 0.6,
                "intercept": 20.0,
                "slope_ci": [0.41, 0.79],
                "n_validation": 8,
                "val_mae_before": 9.1,
                "val_mae_after_cv": 7.4,
                "recommended_column": "brain_age_corrected",
                "warnings": ["slope CI is wide (n_validation = 8): the correction is uncertain"],
            }
        )
    )
    _write_tsv(
        out / "failures.tsv",
        pd.DataFrame(
            {
                "participant_id": ["sub-IXI900", "sub-IXI901"],
                "stage": ["cohort", "preprocess"],
                "file": ["n/a", "/data/sub-IXI901_T1w.nii.gz"],
                "error": [
                    "sub-IXI900: age 'abc' is not a number",
                    "registration diverged <NCC 0.1>",
                ],
            }
        ),
    )
    # QC pictures
    qc_rows = []
    fig_bg = template_array("t1w", res)
    for i in range(10):
        pid = f"sub-IXI{i:03d}"
        png = out / pid / "figures" / f"{pid}_desc-qc_T1w.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        fig = matplotlib.figure.Figure(figsize=(3, 2.4))
        ax = fig.add_subplot(1, 1, 1)
        ax.imshow(np.rot90(fig_bg[:, :, fig_bg.shape[2] // 2 + i - 5]), cmap="gray")
        ax.axis("off")
        fig.savefig(png, dpi=60)
        qc_rows.append(
            {
                "participant_id": pid,
                "reg_quality": 0.6 + 0.03 * i + rng.normal(0, 0.01),
                "qc_png": str(png.relative_to(out)),
            }
        )
    _write_tsv(out / "qc.tsv", pd.DataFrame(qc_rows))
    # training logs
    for _cond in ("augmented",):
        for s in seeds:
            ep = np.arange(1, 31)
            val = 8 + 25 * np.exp(-ep / (6 + rng.uniform(0, 3))) + rng.normal(0, 0.4, ep.size)
            _write_tsv(
                out / "models" / s / "training_log.tsv",
                pd.DataFrame(
                    {
                        "epoch": ep,
                        "train_loss": val**2,
                        "train_mae": val - 1.5,
                        "val_mae": val,
                        "lr": 5e-4,
                        "seconds": 2.0,
                    }
                ),
            )
    # population maps + region tables
    from brainage.population import write_population_maps

    grid = template_grid(res)
    mask = template_array("mask", res)
    ii, jj, kk = np.indices(grid.shape)
    centre = np.array(grid.shape) / 2
    blob = np.exp(
        -((ii - centre[0]) ** 2 + (jj - centre[1] - 2) ** 2 + (kk - centre[2] - 3) ** 2) / 20
    )
    for method in ("guided_backprop", "lrp"):
        maps = blob[None] * rng.uniform(0.5, 2, (5, 1, 1, 1)) + rng.normal(0, 0.2, (5, *grid.shape))
        paths = write_population_maps(maps, mask, grid, out, method)
        mean = nib.load(str(paths["mean"])).get_fdata()
        if atlases is None:
            rows = pd.DataFrame(
                {
                    "rank": [1, 2, 3, 4],
                    "region": REGION_NAMES,
                    "label": [4, 17, 10, 8],
                    "n_voxels": [120, 80, 95, 300],
                    "mean_relevance": [1.2, 0.8, 0.5, -0.3],
                    "mean_abs_relevance": [1.2, 0.8, 0.6, 0.4],
                    "sum_relevance": [144, 64, 47.5, -90],
                    "top10_fraction": [0.9, 0.5, 0.3, 0.0],
                }
            )
            _write_tsv(RunLayout(out, res).regions(method, "toy"), rows)
        else:
            from brainage.atlas import load_atlas, write_region_table

            for a in atlases:
                write_region_table(mean, load_atlas(a, grid), out, method, mask=mask)
    (out / "config.yaml").write_text("model: hofmann\nresolution_mm: 4\nseeds: [0, 1, 2]\n")
    (out / "provenance.json").write_text(
        json.dumps(
            {
                "version": "0.1.0",
                "command": "brainage run --bids /data/ixi --out OUT",
                "started": "2025-01-01T10:00:00",
                "finished": "2025-01-01T11:02:00",
                "stage_seconds": {
                    "preprocess": 1200.0,
                    "train": 2300.5,
                    "predict": 20.0,
                    "explain": 180.0,
                    "report": 12.0,
                },
                "seeds": [0, 1, 2],
                "device": "cpu",
                "n_threads": 2,
            }
        )
    )
    (out / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "brainage run on synthetic data",
                "BIDSVersion": "1.9.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "brainage", "Version": "0.1.0"}],
                "brainage": {"config": {"model": "hofmann"}, "seeds": [0, 1, 2], "synthetic": True},
            }
        )
    )
    if evaluation:
        add_fake_evaluation(out, res=res, seed=seed)
    return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = make_fake_run(tmp_path_factory.mktemp("run") / "OUT")
    write_report(out, subject_pages=False)  # pages: test_report_pages.py
    return out


def _assert_self_contained(html):
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "@import" not in html and "url(" not in html
    imgs = re.findall(r"<img\b[^>]*>", html)
    for tag in imgs:
        src = re.search(r'src="([^"]*)"', tag).group(1)
        assert src.startswith("data:image/png;base64,"), src[:60]
    return imgs


def test_report_written_self_contained_with_all_sections(full_run):
    html = (full_run / "report.html").read_text()
    imgs = _assert_self_contained(html)
    # age hist, scatter, gap, training, methods side by side, 2 methods x (2 maps + 1 bar),
    # qc histogram + 8 gallery pictures, region truth scatter plots + method agreement matrix
    assert len(imgs) == 1 + 1 + 1 + 1 + 1 + 2 * 3 + 1 + 8 + 2
    for anchor in (
        "summary",
        "cohort",
        "predictions",
        "metrics",
        "bias",
        "training",
        "xai",
        "explanations",
        "qc",
        "failures",
        "provenance",
    ):
        assert f'id="{anchor}"' in html
    assert "Problems while building" not in html
    assert "not computed" not in html
    assert "http://" not in html and "https://" not in html  # not even as text


def test_report_shows_metrics_values(full_run):
    html = (full_run / "report.html").read_text()
    metrics = pd.read_csv(full_run / "metrics.tsv", sep="\t")
    for mae in metrics["mae"]:
        assert f"{mae:.2f}" in html
    rec = metrics[(metrics["model"] == "ensemble_corrected") & (metrics["split"] == "test")]
    quote = f"<b>{rec['mae'].iloc[0]:.2f} years</b>"
    assert quote in html  # the MAE to quote is the recommended column's test MAE
    assert "brain_age_corrected" in html


def test_report_shows_regions_bias_qc_failures_provenance(full_run):
    html = (full_run / "report.html").read_text()
    for name in REGION_NAMES:  # long atlas names may break after an underscore (<wbr>)
        assert name in html.replace("_<wbr>", "_")
    assert "0.600" in html and "0.410" in html and "0.790" in html  # slope and CI
    assert "slope CI is wide" in html
    assert "sub-IXI000" in html  # a low-QC subject of the gallery
    assert "registration diverged &lt;NCC 0.1&gt;" in html  # escaped
    assert "brainage run --bids /data/ixi --out OUT" in html
    assert "model: hofmann" in html and "2300.5" in html
    # the region-table file named in the report is the one the run layout wrote
    for method in ("guided_backprop", "lrp"):
        path = RunLayout(full_run, 4).regions(method, "toy")
        assert path.exists() and str(path.relative_to(full_run)) in html


def test_report_says_when_the_data_are_synthetic(full_run, tmp_path):
    html = write_report(full_run).read_text()
    assert "<b>Synthetic data.</b>" in html and "<title>brainage run on synthetic data" in html
    real = make_fake_run(tmp_path / "real", full=False)  # no dataset_description: not synthetic
    assert "Synthetic data." not in write_report(real).read_text()


def test_subject_table_lists_everyone_and_flags_qc_outliers(full_run):
    from brainage.report.section_run import qc_threshold

    html = (full_run / "report.html").read_text()
    pred = pd.read_csv(full_run / "predictions.tsv", sep="\t")
    table = html.split('id="subject-table"')[1].split("</table>")[0]
    assert table.count("<tr") == len(pred) + 1  # header + one row per subject
    assert all(f">{pid}<" in table for pid in pred["participant_id"])
    # the robust rule: median − 3 × 1.4826 × MAD
    values = [0.50, 0.52, 0.54, 0.56, 0.58, 0.60, 0.10]
    assert qc_threshold(values) == pytest.approx(0.54 - 3 * 1.4826 * 0.04)
    assert qc_threshold(values[:4]) is None


def test_bootstrap_intervals_match_the_standard_error_of_the_mae():
    """For normal errors, SE(mean |e|) = σ √(1 − 2/π) / √n: the 95 % interval is ≈ ±1.96 SE."""
    from brainage.report.section_predictions import metric_intervals

    rng = np.random.default_rng(3)
    n, sigma = 400, 5.0
    age = rng.uniform(20, 80, n)
    pred = age + rng.normal(0, sigma, n)
    ci = metric_intervals(pred, age)
    mae = np.mean(np.abs(pred - age))
    se = sigma * np.sqrt(1 - 2 / np.pi) / np.sqrt(n)
    low, high = ci["mae_ci"]
    assert low < mae < high
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)
    r = np.corrcoef(pred, age)[0, 1]
    assert ci["r_ci"][0] < r < ci["r_ci"][1] <= 1
    assert metric_intervals(pred, age) == ci  # seeded: the same interval again
    assert metric_intervals(pred[:4], age[:4])["mae_ci"] is None


def test_map_colour_bar_has_even_ticks_without_the_threshold():
    import nibabel as nib

    from brainage.report.figures_maps import stat_map_figure
    from brainage.space import template_grid

    grid = template_grid(8.0)
    data = np.zeros(grid.shape, np.float32)
    data[2:6, 3:8, 2:6] = np.linspace(-4, 4, 4 * 5 * 4).reshape(4, 5, 4)
    fig = stat_map_figure(nib.Nifti1Image(data, grid.affine), threshold=0.3)
    labels = [t.get_text() for t in fig.axes[-1].get_yticklabels()]
    assert labels == ["-4", "-2", "0", "2", "4"]


def test_gap_figure_fits_the_residual_age_bias():
    from brainage.report.make_figures import gap_figure

    age = np.linspace(20, 80, 30)
    pred = pd.DataFrame({"age": age, "brain_age_gap": -0.3 * (age - 50), "split": "test"})
    ax = gap_figure(pred).axes[0]
    fit = next(line for line in ax.lines if "slope" in line.get_label())
    x, y = fit.get_data()
    assert (y[1] - y[0]) / (x[1] - x[0]) == pytest.approx(-0.3)
    assert "-0.30" in fit.get_label()


def test_report_with_only_predictions(tmp_path):
    out = make_fake_run(tmp_path / "OUT", full=False)
    path = write_report(out)
    html = path.read_text()
    _assert_self_contained(html)
    assert html.count("not computed") >= 3
    assert "not recorded" in html
    pred = pd.read_csv(out / "predictions.tsv", sep="\t", na_values="n/a")
    test = pred[pred["split"] == "test"]
    assert f"{np.mean(np.abs(test['brain_age'] - test['age'])):.2f}" in html
    assert "Problems while building" not in html


def test_report_survives_broken_optional_file(tmp_path):
    out = make_fake_run(tmp_path / "OUT", full=False)
    (out / "metrics.tsv").write_text("this is\tnot\na metrics table\n")
    (out / "bias_correction.json").write_text("{not json")
    html = write_report(out).read_text()
    assert "Problems while building" in html
    assert "bias_correction.json" in html and "metrics.tsv" in html


def test_report_requires_predictions(tmp_path):
    with pytest.raises(InputError, match="predictions.tsv"):
        write_report(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        write_report(tmp_path / "missing")


def test_read_run_folder_discovers_outputs(full_run):
    run = read_run_folder(full_run)
    assert run.methods == ["guided_backprop", "lrp"]
    assert run.population["lrp"]["res"] == "4"
    assert run.population["lrp"]["space"] == TEMPLATE_SPACE
    assert set(run.population["lrp"]) >= {"mean", "top10"}
    assert list(run.regions["lrp"]) == ["toy"]
    assert sorted(run.training_logs) == [("default", f"seed-{i}") for i in range(3)]
    assert run.problems == []


def test_metrics_from_predictions_reference():
    pred = pd.DataFrame(
        {
            "age": [20.0, 30.0, 40.0, 50.0, np.nan],
            "brain_age": [22.0, 27.0, 41.0, 55.0, 60.0],
            "brain_age_seed-0": [20.0, 30.0, 40.0, 50.0, 1.0],
            "split": ["test"] * 5,
        }
    )
    m = metrics_from_predictions(pred).set_index("model")
    assert m.loc["ensemble", "n"] == 4
    np.testing.assert_allclose(m.loc["ensemble", "mae"], (2 + 3 + 1 + 5) / 4)
    np.testing.assert_allclose(m.loc["ensemble", "rmse"], np.sqrt((4 + 9 + 1 + 25) / 4))
    np.testing.assert_allclose(
        m.loc["ensemble", "r"], np.corrcoef(pred["age"][:4], pred["brain_age"][:4])[0, 1]
    )
    assert m.loc["seed-0", "mae"] == 0.0


def test_figures_are_png_data_uris():
    pred = pd.DataFrame(
        {
            "age": [20.0, 40.0, 60.0],
            "brain_age": [25.0, 41.0, 55.0],
            "brain_age_corrected": [21.0, 40.0, 59.0],
            "split": ["validation", "test", "test"],
        }
    )
    uri = mf.figure_to_data_uri(mf.predicted_vs_age_figure(pred))
    assert uri.startswith("data:image/png;base64,")
    import base64

    assert base64.b64decode(uri.split(",", 1)[1]).startswith(b"\x89PNG")
    table = pd.DataFrame({"region": ["a", "b"], "mean_relevance": [1.0, -1.0]})
    assert mf.figure_to_data_uri(mf.region_bar_figure(table)).startswith("data:image/png")


def test_report_without_known_ages(tmp_path):
    out = tmp_path / "OUT"
    out.mkdir()
    pd.DataFrame(
        {
            "participant_id": ["sub-01", "sub-02"],
            "age": ["n/a", "n/a"],
            "brain_age": [40.0, 50.0],
            "split": ["predict", "predict"],
        }
    ).to_csv(out / "predictions.tsv", sep="\t", index=False)
    html = write_report(out).read_text()
    _assert_self_contained(html)
    assert "No subject with known age was scored" in html
    assert "Problems while building" not in html


def test_quote_falls_back_when_metrics_lack_recommended_model(tmp_path):
    out = make_fake_run(tmp_path / "OUT", full=False)
    pred = pd.read_csv(out / "predictions.tsv", sep="\t", na_values="n/a")
    pd.DataFrame({"model": ["seed-0"], "split": ["test"], "n": [12], "mae": [9.99]}).to_csv(
        out / "metrics.tsv", sep="\t", index=False
    )
    (out / "bias_correction.json").write_text(
        json.dumps({"recommended_column": "brain_age_corrected"})
    )
    html = write_report(out).read_text()
    test = pred[pred["split"] == "test"]
    mae = np.mean(np.abs(test["brain_age_corrected"] - test["age"]))
    assert f"<b>{mae:.2f} years</b>" in html
    assert "9.99" in html
