"""Per-subject report pages, interactive viewers and the shared-scale slice figure."""

import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_report import XAI_SUBJECTS, make_fake_run

from brainage.report import figures_maps as fm
from brainage.report import write_report
from brainage.report.subject_pages import viewer_html
from brainage.space import template_grid


@pytest.fixture(scope="module")
def paged_run(tmp_path_factory):
    out = make_fake_run(tmp_path_factory.mktemp("pages") / "OUT", n=44)
    write_report(out, n_jobs=1)
    return out


def _no_network(html):
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "favicon" not in html


def test_every_subject_has_a_page_linked_from_the_subject_table(paged_run):
    pred = pd.read_csv(paged_run / "predictions.tsv", sep="\t")
    report = (paged_run / "report.html").read_text()
    table = report.split('id="subject-table"')[1].split("</table>")[0]
    for rec in pred.to_dict("records"):
        pid = rec["participant_id"]
        assert f'<a href="{pid}.html#{pid}">{pid}</a>' in table
        page = (paged_run / f"{pid}.html").read_text()
        _no_network(page)
        assert f"{rec['brain_age']:.1f} years" in page  # the prediction of predictions.tsv
        assert 'href="report.html#subjects"' in page
    # every local link of a page resolves to a file of the run folder
    page = (paged_run / f"{XAI_SUBJECTS[0]}.html").read_text()
    refs = [r for r in re.findall(r'(?:src|href)="([^"#]+)[^"]*"', page) if ":" not in r]
    assert len(refs) >= 3  # QC picture (image and link), viewer (frame and link), neighbours
    for ref in refs:
        assert (paged_run / ref).is_file(), ref


def test_explained_subjects_get_slices_of_every_method_and_an_offline_viewer(paged_run):
    page = (paged_run / f"{XAI_SUBJECTS[0]}.html").read_text()
    assert page.count('<img class="fig" src="data:image/png;base64,') == 1
    viewer = (
        paged_run
        / XAI_SUBJECTS[0]
        / "figures"
        / f"{XAI_SUBJECTS[0]}_desc-guidedbackprop_viewer.html"
    )
    assert viewer.is_file() and viewer.name in page
    html = viewer.read_text()
    _no_network(html)
    assert "brainsprite" in html.lower()
    # a subject without maps says so instead of drawing nothing
    other = (paged_run / "sub-IXI000.html").read_text()
    assert "no relevance map" in other and "<iframe" not in other


def test_population_viewers_are_embedded_in_the_methods_section(paged_run):
    report = (paged_run / "report.html").read_text()
    for method in ("guided_backprop", "lrp"):
        name = f"figures/method-{method.replace('_', '')}_stat-mean_viewer.html"
        assert f'<iframe src="{name}"' in report
        _no_network((paged_run / name).read_text())


def test_uncertainty_from_fewer_than_three_cnns_is_flagged(tmp_path):
    from scipy import stats

    out = make_fake_run(tmp_path / "OUT", full=False)
    pred = pd.read_csv(out / "predictions.tsv", sep="\t").drop(columns="brain_age_seed-2")
    pred.to_csv(out / "predictions.tsv", sep="\t", index=False)
    html = write_report(out, subject_pages=False).read_text()
    factor = 2 * stats.t.ppf(0.975, 1) / np.sqrt(2)  # 17.97: the t-interval width per SD
    assert "Uncertainty from 2 base CNNs only" in html and f"{factor:.1f} ×" in html
    make_fake_run(tmp_path / "OUT3", full=False)
    assert "base CNNs only" not in write_report(tmp_path / "OUT3", subject_pages=False).read_text()


def test_the_slice_figure_puts_every_method_on_one_scale():
    """Each map is divided by its own 99th percentile of |r| (oracle: scaling a map changes
    nothing), and every slice of a map uses the same divisor."""
    grid = template_grid(4.0)
    rng = np.random.default_rng(0)
    data = rng.normal(0, 1, grid.shape)
    brain = nib.Nifti1Image((np.abs(data) < 3).astype(np.uint8), grid.affine)
    cache: dict = {}
    aff, shape = grid.affine, grid.shape
    g = fm._grid(
        cache, nib.as_closest_canonical(nib.Nifti1Image(data, aff)).affine, shape, None, brain
    )
    scale = fm.panel_scale(data, g["brain"])
    scaled = fm.panel_scale(7.0 * data, g["brain"])
    assert scaled == pytest.approx(7.0 * scale)
    k = shape[2] // 2
    a = fm.relevance_rgba(data[:, :, k].T / scale, g, k, fm.matplotlib.colormaps["RdBu_r"])
    b = fm.relevance_rgba(7.0 * data[:, :, k].T / scaled, g, k, fm.matplotlib.colormaps["RdBu_r"])
    np.testing.assert_allclose(a, b)
    # saturated values take the colour map's end colours; zero is white
    sl = np.array([[-5.0, 0.0, 5.0]])
    rgb = fm.relevance_rgba(sl, {"bg": None}, 0, fm.matplotlib.colormaps["RdBu_r"])
    end = fm.matplotlib.colormaps["RdBu_r"]([0.0, 1.0])[:, :3]
    np.testing.assert_allclose(rgb[0, [0, 2]], end)
    fig = fm.subject_slices_figure(
        {"a": nib.Nifti1Image(data, aff), "b": nib.Nifti1Image(7.0 * data, aff)}, brain=brain
    )
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == [f"a\n÷ {scale:.2g}", f"b\n÷ {7 * scale:.2g}"]
    titles = [t.get_text() for t in fig.axes[0].texts if t.get_text().startswith("z =")]
    assert titles == [f"z = {z:g} mm" for z in fm.SUBJECT_CUTS_MM]


def test_viewer_has_no_network_reference():
    grid = template_grid(4.0)
    img = nib.Nifti1Image(np.random.default_rng(1).normal(size=grid.shape), grid.affine)
    _no_network(viewer_html(img, title="x"))


def test_training_axis_is_not_stretched_by_early_spikes():
    from brainage.report.figures_plots import robust_upper_limit, training_curves_figure

    epochs = np.arange(1, 41)
    val = 8 + 4 * np.exp(-epochs / 5.0)
    val[:2] = [67.0, 40.0]  # the spikes of a first epoch
    top, cut = robust_upper_limit([val])
    assert cut and 10 < top < 20  # the plateau and its approach stay visible
    assert np.mean(val <= top) >= 0.9
    top2, cut2 = robust_upper_limit([val[5:]])
    assert not cut2 and top2 == pytest.approx(1.05 * val[5:].max())
    assert robust_upper_limit([[np.nan]]) is None
    log = pd.DataFrame({"epoch": epochs, "val_mae": val})
    fig = training_curves_figure({("fold-1", "seed-0"): log})
    assert fig.axes[0].get_ylim()[1] == pytest.approx(top)


def test_bias_box_names_its_settings_in_words(tmp_path):
    import json

    out = make_fake_run(tmp_path / "OUT", full=True, evaluation=False)
    bias = json.loads((out / "bias_correction.json").read_text())
    bias.update({"min_slope": 0.3, "n_bootstrap": 1000, "seed": 0, "recommended": "x"})
    (out / "bias_correction.json").write_text(json.dumps(bias))
    html = write_report(out, subject_pages=False).read_text()
    box = html.split('id="bias"')[1].split("</section>")[0]
    assert "smallest slope a accepted" in box and "bootstrap resamples" in box
    assert "min_slope" not in box and ">recommended<" not in box


def test_population_colour_bars_say_what_they_measure(tmp_path):
    from brainage.report.figures_maps import stat_map_figure

    grid = template_grid(4.0)
    img = nib.Nifti1Image(np.random.default_rng(2).normal(size=grid.shape), grid.affine)
    fig = stat_map_figure(img, cut_coords=(0, 20), colorbar_label="mean relevance (z)")
    bars = [a for a in fig.axes if a.get_ylabel()]
    assert bars and bars[-1].get_ylabel() == "mean relevance (z)"


def test_faithfulness_table_and_curves_name_the_most_faithful_method(tmp_path):
    from test_report import XAI_ROWS

    from brainage.io import write_tsv
    from brainage.io.layout import RunLayout

    rows = {m: dict(v) for m, v in XAI_ROWS.items()}
    aopc = {"guided_backprop": (1.0, -0.2, 0.1), "lrp": (3.0, 0.5, 2.0)}  # (diff, lo, hi)
    for m, (d, lo, hi) in aopc.items():
        rows[m].update(aopc_morf=d + 0.4, aopc_morf_ci_low=d, aopc_morf_ci_high=d + 1,
                       aopc_lerf=-1.0, aopc_random=0.4, aopc_morf_minus_random=d,
                       aopc_morf_minus_random_ci_low=lo, aopc_morf_minus_random_ci_high=hi,
                       faithfulness_n=12)  # fmt: skip
    out = make_fake_run(tmp_path / "OUT", evaluation=False)
    from test_report import add_fake_evaluation

    add_fake_evaluation(out, xai_rows=rows)
    fr = np.array([0, 0.1, 0.5])
    for m in aopc:
        curve = pd.DataFrame({"fraction": fr, "morf": -3 * fr, "lerf": fr, "random": -fr})
        write_tsv(RunLayout(out).faithfulness(m), curve)
    html = write_report(out, subject_pages=False).read_text()
    part = html.split('id="faithfulness"')[1].split("<h3")[0]
    assert part.count("more faithful than random") == 1  # lrp: CI 0.5 to 2.0 excludes 0
    assert part.count("not better than random") == 1  # guided backprop: CI −0.2 to 0.1
    assert '<tr class="rec"><td class="l">lrp</td>' in part
    assert part.count('<img class="fig"') == 1


def test_region_truth_and_robustness_section(tmp_path):
    """Region-level scores, max-sensitivity, the truth scatter plots and the agreement matrix."""
    from test_report import add_fake_evaluation

    out = add_fake_evaluation(make_fake_run(tmp_path / "OUT", evaluation=False))
    html = write_report(out, subject_pages=False).read_text()
    part = html.split('id="robustness"')[1].split("<h3>")[0]
    assert '<tr class="rec"><td class="l">lrp</td><td>0.880</td><td>0.930</td>' in part
    assert "<td>0.120</td>" in part and "<td>0.310</td>" in part  # max-sensitivity
    assert "20 / 40" in part and "harvard_oxford" in part
    assert part.count('<img class="fig') == 2 and "method agreement aal" in part
    assert "median ρ 0.40" in part


def test_pages_and_viewers_are_kept_until_their_inputs_change(paged_run):
    """A rerun of the report rewrites only what changed (keyed by content), so a report stage
    killed half-way resumes instead of starting over."""
    import os

    sub = XAI_SUBJECTS[1]
    page = paged_run / f"{sub}.html"
    viewer = next((paged_run / sub / "figures").glob("*_viewer.html"))
    other = paged_run / f"{XAI_SUBJECTS[0]}.html"
    for p in (page, viewer, other):
        os.utime(p, ns=(1, 1))
    write_report(paged_run)
    assert page.stat().st_mtime_ns == viewer.stat().st_mtime_ns == other.stat().st_mtime_ns == 1
    from brainage.io.layout import RunLayout

    path = RunLayout(paged_run).relevance("guided_backprop", sub)
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2.0, img.affine), str(path))
    write_report(paged_run)
    assert page.stat().st_mtime_ns != 1 and viewer.stat().st_mtime_ns != 1
    assert other.stat().st_mtime_ns == 1  # another subject's page is kept
    assert "brainage-key:" in page.read_text()[:200]
