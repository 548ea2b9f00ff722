"""The report section "Explanation methods vs ground truth" (evaluation/ of a run folder)."""

import base64
import re

import matplotlib
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_report import (
    LESION_ROWS,
    TRUTH_PEAK_K,
    XAI_ROWS,
    XAI_SUBJECTS,
    _assert_self_contained,
    make_fake_run,
    truth_mask,
)

from brainage.io.layout import label
from brainage.report import make_figures as mf
from brainage.report import read_run_folder, write_report
from brainage.space import template_grid

matplotlib.use("Agg")

RES = 4


@pytest.fixture(scope="module")
def xai_run(tmp_path_factory):
    out = make_fake_run(tmp_path_factory.mktemp("xai") / "OUT", res=RES)
    write_report(out)
    return out


def _section(html, anchor="xai"):
    start = html.index(f'<section id="{anchor}">')
    return html[start : html.index("</section>", start)]


def _row(section, method):
    """The <tr> of ``method`` in the first table of ``section``."""
    rows = re.findall(r"<tr\b[^>]*>.*?</tr>", section, re.S)
    hits = [r for r in rows if f"<b>{method}</b>" in r]
    assert hits, f"no row for {method}"
    return hits[0]


def _cell_classes(row):
    return [
        (cls.split(), text)
        for cls, text in re.findall(r'<td class="([^"]*)">(.*?)</td>', row, re.S)
    ]


def test_read_run_folder_finds_evaluation(xai_run):
    run = read_run_folder(xai_run)
    assert run.problems == []
    assert list(run.xai["method"]) == list(XAI_ROWS)
    assert list(run.lesions["method"]) == [r["method"] for r in LESION_ROWS]
    assert sorted(run.subject_maps) == sorted(XAI_ROWS)
    for method, maps in run.subject_maps.items():
        assert sorted(maps) == sorted(XAI_SUBJECTS)
        # the ensemble map, not the base model's one under seed-0/
        assert all(p.parent.name == f"method-{label(method)}" for p in maps.values())
    assert sorted(run.truth) == sorted(XAI_SUBJECTS)
    grid = template_grid(RES)
    for pid, peak in zip(XAI_SUBJECTS, TRUTH_PEAK_K, strict=True):
        z = mf.axial_slice_with_most(nib.load(str(run.truth[pid])))
        assert z == pytest.approx(grid.affine[2, 3] + RES * peak)
    assert run.explained_methods == list(XAI_ROWS)


def test_xai_table_flags_failing_method_and_highlights_best(xai_run):
    html = (xai_run / "report.html").read_text()
    sec = _section(html)
    assert "not computed" not in sec
    gbp, lrp = _row(sec, "guided_backprop"), _row(sec, "lrp")
    # the failing method (passes_randomisation False) is flagged, the passing one not
    assert 'class="failing' in gbp and "fails sanity check" in gbp
    assert "failing" not in lrp and "fails sanity check" not in lrp and "passes" in lrp
    assert "Methods that pass: <b>lrp</b>." in sec
    assert "Adebayo et al. 2018" in sec and "≥ 0.50" in sec
    # best value per ground-truth column: lrp everywhere (higher is better); chance column never
    best_lrp = [text for cls, text in _cell_classes(lrp) if "best" in cls]
    best_gbp = [text for cls, text in _cell_classes(gbp) if "best" in cls]
    assert best_gbp == []
    assert [t.split()[0] for t in best_lrp] == ["0.412", "0.876", "0.377"]
    # mass accuracy vs its chance level: 0.412 / 0.081 = 5.1
    assert "(5.1× chance)" in lrp and "(1.5× chance)" in gbp
    assert "mask fraction" in sec and "0.5 (chance)" in sec
    # numbers as written
    for method, values in XAI_ROWS.items():
        row = _row(sec, method)
        assert f"{values['randomisation_spearman']:.2f}" in row
        assert f"{values['seed_dice']:.2f}" in row
    # the failing method is flagged where its population maps are shown too
    methods_sec = _section(html, "explanations")
    assert methods_sec.count("fails sanity check") == 1
    summary = _section(html, "summary")
    assert "failed by guided_backprop" in summary and "passed by lrp" in summary


def test_side_by_side_figure_is_embedded(xai_run):
    html = (xai_run / "report.html").read_text()
    _assert_self_contained(html)
    sec = _section(html)
    m = re.search(r'<img class="fig" alt="explanation methods side by side" src="([^"]+)"', sec)
    assert m and m.group(1).startswith("data:image/png;base64,")
    png = base64.b64decode(m.group(1).split(",", 1)[1])
    assert png.startswith(b"\x89PNG") and len(png) < 250_000
    assert "outlined in green" in sec  # truth exists
    for pid in XAI_SUBJECTS:
        assert pid in sec


def test_lesion_table_and_reading(xai_run):
    sec = _section((xai_run / "report.html").read_text())
    lrp = [r for r in re.findall(r"<tr>.*?</tr>", sec, re.S) if "<b>lrp</b>" in r and "<td" in r]
    assert lrp and "uses lesions" in lrp[-1] and "&lt; 0.001" in lrp[-1]
    assert '<td class="l">FLAIR</td>' in lrp[-1]
    gbp = [r for r in re.findall(r"<tr>.*?</tr>", sec, re.S) if "<b>guided_backprop</b>" in r]
    assert gbp and '<td class="l">T1w</td>' in gbp[-1]
    assert "This holds for <b>lrp</b>, not for guided_backprop." in sec
    assert "more than 30 lesion voxels" in sec


def test_report_without_evaluation_folder(tmp_path):
    out = make_fake_run(tmp_path / "OUT", res=RES, evaluation=False)
    html = write_report(out).read_text()
    _assert_self_contained(html)
    sec = _section(html)
    assert "not computed" in sec and "<img" not in sec and "<table" not in sec
    assert "Problems while building" not in html
    assert "fails sanity check" not in html and "Model-randomisation" not in html


def test_real_data_without_truth_or_lesions(tmp_path):
    """Real data: ground-truth columns n/a, U-Noise not checked, no truth masks, no lesions."""
    from test_report import add_fake_evaluation

    nan = float("nan")
    rows = {
        m: {**v, "mass_accuracy": nan, "mask_fraction": nan, "roc_auc": nan, "topk_precision": nan}
        for m, v in XAI_ROWS.items()
    }
    rows["lrp"]["passes_randomisation"] = None  # written as n/a
    out = make_fake_run(tmp_path / "OUT", res=RES, evaluation=False)
    add_fake_evaluation(out, res=RES, truth=False, lesions=False, xai_rows=rows)
    (out / "config.yaml").write_text("evaluate:\n  threshold: 0.3\n")  # the run's pass rule
    assert "n/a" in (out / "evaluation" / "xai.tsv").read_text()
    html = write_report(out).read_text()
    sec = _section(html)
    assert "No ground truth (real data)" in sec
    assert 'class="num best' not in sec and "× chance" not in sec
    assert "not checked" in _row(sec, "lrp") and "Not checked: lrp." in sec
    assert "No method passes the check." in sec
    assert "≥ 0.30" in sec
    assert "fails sanity check" in _row(sec, "guided_backprop")
    assert "through the lateral ventricles" in sec and "outlined in green" not in sec
    assert "no evaluation/lesions.tsv" in sec
    assert "Problems while building" not in html


def test_broken_xai_table_is_reported(tmp_path):
    out = make_fake_run(tmp_path / "OUT", full=False)
    (out / "evaluation").mkdir()
    (out / "evaluation" / "xai.tsv").write_text("no\tmethod column\n1\t2\n")
    html = write_report(out).read_text()
    assert "Problems while building" in html and "xai.tsv" in html
    assert "not computed" in _section(html)


# ------------------------------------------------------------------------------------- figures


def test_axial_slice_with_most_known_answer():
    grid = template_grid(RES)
    mask = truth_mask(RES, peak_k=17)
    z = mf.axial_slice_with_most(nib.Nifti1Image(mask.astype(np.uint8), grid.affine))
    assert z == pytest.approx(grid.affine[2, 3] + RES * 17)
    # the same mask stored with a flipped k axis (affine says so): same MNI z
    flip = grid.affine.copy()
    flip[2, 2] = -RES
    flip[2, 3] = grid.affine[2, 3] + RES * (grid.shape[2] - 1)
    z_flip = mf.axial_slice_with_most(nib.Nifti1Image(mask[:, :, ::-1].astype(np.uint8), flip))
    assert z_flip == pytest.approx(z)
    assert (
        mf.axial_slice_with_most(nib.Nifti1Image(np.zeros((7, 8, 9), np.uint8), grid.affine))
        is None
    )


def test_panel_scale_reference():
    rng = np.random.default_rng(3)
    data = rng.normal(0, 1, (7, 8, 9))
    mask = np.zeros(data.shape, bool)
    mask[2:5, 1:6, 3:8] = True
    assert mf.panel_scale(data, mask) == pytest.approx(np.percentile(np.abs(data[mask]), 99))
    assert mf.panel_scale(data, None, 50) == pytest.approx(np.median(np.abs(data)))
    assert mf.panel_scale(np.zeros((7, 8, 9))) == 1.0  # blank map: no division by zero


def test_side_by_side_panels_show_the_right_slice_and_scale():
    """Without background each panel's image is the map's slice at the truth's widest k, (x, y)."""
    grid = template_grid(RES)
    rng = np.random.default_rng(0)
    peaks = (11, 27)
    maps = {m: [] for m in ("a_method", "b_method", "c_method")}
    truths = []
    for peak in peaks:
        truths.append(nib.Nifti1Image(truth_mask(RES, peak).astype(np.uint8), grid.affine))
        for m in maps:
            maps[m].append(nib.Nifti1Image(rng.normal(0, 1, grid.shape), grid.affine))
    maps["c_method"][1] = None
    fig = mf.methods_side_by_side_figure(maps, ["s1", "s2"], truths=truths, flagged=["b_method"])
    assert len(fig.axes) == 2 * 3 + 1  # panels + the colour bar
    axes = fig.axes[:6]
    for r, peak in enumerate(peaks):
        for c, m in enumerate(maps):
            ax = axes[r * 3 + c]
            if maps[m][r] is None:
                assert not ax.images and "no map" in ax.texts[0].get_text()
                continue
            data = np.asarray(maps[m][r].dataobj)
            shown = ax.images[0].get_array()
            np.testing.assert_array_equal(np.asarray(shown), data[:, :, peak].T)
            vmax = np.percentile(np.abs(data), 99)
            np.testing.assert_allclose(ax.images[0].get_clim(), (-vmax, vmax))
            assert ax.collections  # the truth contour
    assert "fails sanity check" in axes[1].get_title()
    assert "fails" not in axes[0].get_title() and "fails" not in axes[2].get_title()
    assert "z = -30 mm" in axes[0].get_ylabel()  # -74 + 4 * 11
    uri = mf.figure_to_data_uri(fig)
    assert uri.startswith("data:image/png;base64,")


def test_side_by_side_validates_inputs():
    grid = template_grid(RES)
    img = nib.Nifti1Image(np.ones(grid.shape), grid.affine)
    with pytest.raises(ValueError, match="one map per row"):
        mf.methods_side_by_side_figure({"lrp": [img]}, ["s1", "s2"])
    with pytest.raises(ValueError, match="'truths'"):
        mf.methods_side_by_side_figure({"lrp": [img]}, ["s1"], truths=[None, None])
    with pytest.raises(ValueError, match="at least one method"):
        mf.methods_side_by_side_figure({}, ["s1"])


def test_lesion_writer_output_is_read(tmp_path):
    """lesions.tsv as written by brainage.stats (method '' for a single result) renders."""
    from brainage.stats import lesion_relevance_test, write_lesion_table

    rng = np.random.default_rng(1)
    shape = (24, 28, 22)
    brain = np.zeros(shape, bool)
    brain[2:22, 2:26, 2:20] = True
    lesions = np.zeros((6, *shape), bool)
    lesions[:, 8:12, 8:12, 8:12] = True  # 64 voxels each
    maps = rng.normal(0.2, 0.1, (6, *shape)) + 1.0 * lesions
    result = lesion_relevance_test(maps, lesions, brain)
    out = make_fake_run(tmp_path / "OUT", full=False)
    write_lesion_table(result, out)
    html = write_report(out).read_text()
    sec = _section(html)
    assert "uses lesions" in sec and "This holds for <b>ensemble</b>" in sec
    assert f"{result['d']:.2f}" in sec and f"{result['t']:.2f}" in sec
    # relevance values keep 3 significant digits whatever their scale
    assert f"<td>{result['mean_lesion_relevance']:.3g}</td>" in sec
    assert "Problems while building" not in html
    table = pd.read_csv(out / "evaluation" / "lesions.tsv", sep="\t")
    assert len(table) == 1


def test_palette_png_is_smaller_and_validated():
    from matplotlib.figure import Figure

    def fig():
        f = Figure(figsize=(4, 3))
        f.add_subplot(1, 1, 1).imshow(np.random.default_rng(0).normal(size=(60, 80)), cmap="RdBu_r")
        return f

    full = base64.b64decode(mf.figure_to_data_uri(fig()).split(",", 1)[1])
    small = base64.b64decode(mf.figure_to_data_uri(fig(), max_colors=256).split(",", 1)[1])
    assert full[25] in (2, 6) and small[25] == 3  # IHDR colour type: RGB(A) vs palette
    assert len(small) < len(full)
    with pytest.raises(ValueError, match="max_colors"):
        mf.figure_to_data_uri(fig(), max_colors=1000)
