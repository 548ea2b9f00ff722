"""The stage engine on toy stages: keys chain, records are the completion marker, failures."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from brainage.config import load_config
from brainage.errors import ConfigError, InputError
from brainage.io.atomic import write_text
from brainage.io.layout import RunLayout, label, parse_entities, res_label
from brainage.workflow import ItemResult, RunContext, Runner, Stage, read_record
from brainage.workflow.records import cache_key

CALLS: list[tuple[str, str]] = []


class Source(Stage):
    """One item per subject; its input is the subject's value (like a scan's bytes)."""

    name = "source"
    tolerate = (InputError,)

    def items(self, ctx):
        return ctx.ok_subjects()

    def inputs(self, ctx, item):
        return {"value": float(ctx.cohort.set_index("participant_id").loc[item, "age"])}

    def compute(self, ctx, item, key):
        CALLS.append((self.name, item))
        value = self.inputs(ctx, item)["value"]
        if value < 0:
            raise InputError("negative value", participant_id=item)
        path = ctx.layout.root / "source" / f"{item}.txt"
        write_text(path, str(value))
        return ItemResult({"value": path}, {"value": value})


class Scale(Stage):
    """Item-wise on Source, with a parameter."""

    name = "scale"
    requires = ("source",)

    def items(self, ctx):
        return [i for (s, i) in ctx.records if s == "source"]

    def depends(self, ctx, item):
        return [("source", item)]

    def params(self, ctx, item):
        return {"factor": ctx.factor}

    def compute(self, ctx, item, key):
        CALLS.append((self.name, item))
        v = ctx.record("source", item).values["value"] * ctx.factor
        path = write_text(ctx.layout.root / "scale" / f"{item}.txt", str(v))
        return ItemResult({"value": path}, {"value": v})


class Total(Stage):
    """One item over every Scale item."""

    name = "total"
    requires = ("scale",)

    def items(self, ctx):
        return ["all"]

    def compute(self, ctx, item, key):
        CALLS.append((self.name, item))
        total = sum(r.values["value"] for r in ctx.stage_records("scale").values())
        path = write_text(ctx.layout.root / "total.txt", str(total))
        return ItemResult({"total": path}, {"total": total})


class Ctx(RunContext):
    factor: float = 2.0


def _run(root, ages, factor=2.0, strict=False):
    CALLS.clear()
    cohort = pd.DataFrame({"participant_id": [f"s{i}" for i in range(len(ages))], "age": ages})
    cfg = load_config(overrides={"run": {"strict": strict, "backend": "serial"}})
    ctx = Ctx(RunLayout(root), cfg, cohort, progress=False)
    ctx.factor = factor
    runner = Runner(ctx, [Source(), Scale(), Total()])
    return runner.run(["total"]), ctx


def test_keys_chain_and_only_what_depends_on_a_change_reruns(tmp_path):
    ages = [30.0, 40.0, 50.0]
    computed, ctx = _run(tmp_path, ages)
    assert computed == {"source": 3, "scale": 3, "total": 1}
    assert ctx.record("total", "all").values["total"] == 240.0
    computed, _ = _run(tmp_path, ages)  # nothing changed: nothing computed
    assert computed == {"source": 0, "scale": 0, "total": 0} and CALLS == []
    computed, ctx = _run(tmp_path, [30.0, 41.0, 50.0])  # one input
    assert computed == {"source": 1, "scale": 1, "total": 1}
    assert CALLS == [("source", "s1"), ("scale", "s1"), ("total", "all")]
    assert ctx.record("total", "all").values["total"] == 242.0
    computed, ctx = _run(tmp_path, [30.0, 41.0, 50.0], factor=3.0)  # one parameter
    assert computed == {"source": 0, "scale": 3, "total": 1}
    assert ctx.record("total", "all").values["total"] == 363.0


def test_record_is_written_last_and_a_missing_output_is_redone(tmp_path):
    _run(tmp_path, [30.0, 40.0])
    layout = RunLayout(tmp_path)
    rec = read_record(layout, "scale", "s0")
    assert rec is not None and rec.complete(layout)
    data = json.loads(layout.record("scale", "s0").read_text())
    assert {"key", "params", "inputs", "upstream", "seconds", "outputs", "finished"} <= set(data)
    assert data["upstream"] == {"source/s0": read_record(layout, "source", "s0").key}
    (tmp_path / "scale" / "s0.txt").unlink()  # an output lost: the item is incomplete
    computed, _ = _run(tmp_path, [30.0, 40.0])
    assert computed == {"source": 0, "scale": 1, "total": 0}
    layout.record("source", "s1").unlink()  # killed before its record: redone
    computed, _ = _run(tmp_path, [30.0, 40.0])
    assert computed["source"] == 1 and computed["scale"] == 0  # same key again downstream


def test_tolerated_failure_skips_one_subject_and_strict_stops(tmp_path):
    computed, ctx = _run(tmp_path, [30.0, -1.0, 50.0])
    assert computed == {"source": 3, "scale": 2, "total": 1}
    assert list(ctx.failures) == ["s1"] and ctx.failure_stage["s1"] == "source"
    assert ctx.record("total", "all").values["total"] == 160.0
    with pytest.raises(InputError, match="s1.*negative value"):
        _run(tmp_path / "strict", [30.0, -1.0], strict=True)


def test_cache_key_covers_every_part():
    base = ("s", "1", "item", {"p": 1}, {"x": "ab"}, {"up/i": "k"})
    key = cache_key(*base)
    for i, other in enumerate(("t", "2", "other", {"p": 2}, {"x": "ac"}, {"up/i": "l"})):
        changed = list(base)
        changed[i] = other
        assert cache_key(*changed) != key
    assert cache_key(*base) == key and len(key) == 32


def test_layout_builds_and_parses_bids_names(tmp_path):
    layout = RunLayout(tmp_path, 1.5)
    path = layout.relevance("lrp_epsilon_gamma_box", "IXI_012", "seed-3")
    assert path.parent.name == "seed-3" and path.parent.parent.name == "method-lrpepsilongammabox"
    e = parse_entities(path)
    assert e == {
        "sub": "IXI012",
        "space": "MNI152NLin2009aSym",
        "res": "1p5",
        "desc": "lrpepsilongammabox",
        "suffix": "relevance",
        "extension": ".nii.gz",
    }
    assert layout.method_of(path, ["lrp", "lrp_epsilon_gamma_box"]) == "lrp_epsilon_gamma_box"
    assert (
        res_label(2.0) == "2"
        and res_label(1.5) == "1p5"
        and label("harvard_oxford") == ("harvardoxford")
    )
    pop = parse_entities(layout.population("guided_backprop", "top10"))
    assert pop["method"] == "guidedbackprop" and pop["desc"] == "top10"
    with pytest.raises(ConfigError, match="'kind'"):
        layout.population("lrp", "top5")


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_outputs_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = write_text(tmp_path / f"f{mask:o}.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_same_seed_same_split_before_preprocessing():
    """Splits are a function of the cohort and the seed only (drawn before any work)."""
    from brainage.data.splits import make_splits

    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {"participant_id": [f"s{i}" for i in range(40)], "age": rng.uniform(20, 80, 40)}
    )
    a = make_splits(table, 0.1, 0.15, seed=3)
    b = make_splits(table.sample(frac=1, random_state=1).sort_index(), 0.1, 0.15, seed=3)
    pd.testing.assert_series_equal(a, b)
