"""Result-record schema, atomic writes, idempotency keys, and the golden model-zoo tables."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from byol_bench.records import (
    RecordError,
    find_record,
    load_records,
    make_record,
    model_label,
    read_record,
    validate_record,
    write_record,
)
from byol_bench.tables import avgpool_setting, records_frame, render_csv, render_markdown, render_summary

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[1]


def _record(**changes):
    record = make_record(
        protocol="voc07_svm", dataset="voc07", model="m", preset="tiny", metrics={"svm": 50.0},
        config={"a": 1}, config_hash="abcdefabcdef",
        checkpoint={"path": "m.pth", "sha256": "c" * 64, "format": "torchvision", "arch": "resnet18",
                    "encoder": "online"},
        seeds={"seed": 0}, batch_size_per_device=32, wall_time_s=1.0, tiny=True,
        provenance={"world_size": 1, "git_commit": "x", "versions": {}, "device": "cpu"})
    record.update(changes)
    return record


def test_golden_records_validate():
    records = load_records(GOLDEN / "records")
    assert len(records) == 7


@pytest.mark.parametrize("mutate, needle", [
    (lambda r: r.pop("metrics"), "missing fields ['metrics']"),
    (lambda r: r.update(extra=1), "unknown fields ['extra']"),
    (lambda r: r.update(world_size="8"), "'world_size' must be int"),
    (lambda r: r.update(tiny=1), "'tiny' must be bool"),
    (lambda r: r["metrics"].update(svm=float("nan")), "metric 'svm' must be a finite number"),
    (lambda r: r["metrics"].update(svm="86"), "metric 'svm' must be a finite number"),
    (lambda r: r["checkpoint"].pop("sha256"), "checkpoint is missing ['sha256']"),
    (lambda r: r.update(schema_version=3), "schema_version 3"),
])
def test_schema_violations_are_named(mutate, needle):
    record = copy.deepcopy(_record())
    mutate(record)
    with pytest.raises(RecordError) as err:
        validate_record(record, "rec.json")
    assert needle in str(err.value) and "rec.json" in str(err.value)


def test_write_find_and_corrupt_record(tmp_path):
    record = _record()
    path = write_record(record, tmp_path)
    assert read_record(path) == record
    assert find_record(tmp_path, "voc07_svm", "voc07", "c" * 64, "abcdefabcdef") == path
    assert find_record(tmp_path, "voc07_svm", "voc07", "c" * 64, "000000000000") is None
    path.write_text("{ truncated")
    assert find_record(tmp_path, "voc07_svm", "voc07", "c" * 64, "abcdefabcdef") is None
    assert not list(tmp_path.glob(".*.tmp"))


def test_loader_reads_records_only_and_other_json_leaves_the_tables_unchanged(tmp_path):
    import shutil

    folder = tmp_path / "records"
    shutil.copytree(GOLDEN / "records", folder)
    record_file = write_record(_record(), folder)
    stem = record_file.name.removesuffix(".json")
    detections = [{"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 2.0, 2.0], "score": 0.9}]
    (folder / f"{stem}.bbox.json").write_text(json.dumps(detections))  # results next to their record
    (folder / "segm.json").write_text("\n  " + json.dumps(detections))
    (folder / "bbox.json").write_text('[{"image_id": 1, "bbox": [0')  # a truncated results file: still not a record
    (folder / "notes.json").write_text(json.dumps({"note": "mine", "dataset": "voc07"}))
    (folder / "empty.json").write_text("")
    (folder / "run" / "sub").mkdir(parents=True)
    (folder / "run" / "sub" / "resolved.json").write_text(json.dumps({"lr": 30.0}))
    records = load_records(folder)
    written = read_record(record_file)
    assert len(records) == 8 and records.count(written) == 1
    expected = [*load_records(GOLDEN / "records"), written]
    assert render_markdown(records) == render_markdown(expected) and render_csv(records) == render_csv(expected)


@pytest.mark.parametrize("text, needle", [
    ('{"schema_version": 1, "protocol": "voc07_svm"', "unreadable record"),  # truncated object: maybe a record
    ('{"protocol": "voc07_svm", "metrics": {"svm": 1.0}}', "missing fields"),  # a damaged record is not skipped
    ('{"schema_version": 1}', "missing fields"),
])
def test_loader_fails_on_a_damaged_record(tmp_path, text, needle):
    (tmp_path / "odd_name.json").write_text(text)
    with pytest.raises(RecordError, match=needle) as err:
        load_records(tmp_path)
    assert "odd_name.json" in str(err.value)


def test_model_label():
    assert model_label("a/b/byol_r50.pth") == "byol_r50"
    assert model_label("work_dirs/byol_tiny/final.pth") == "byol_tiny"


def test_tables_match_golden_files():
    records = load_records(GOLDEN / "records")
    assert render_markdown(records) == (GOLDEN / "model_zoo.md").read_text()
    assert render_csv(records) == (GOLDEN / "model_zoo.csv").read_text()


def test_newest_record_wins_and_blanks_stay_blank():
    md = render_markdown(load_records(GOLDEN / "records"))
    assert "| random-init_resnet50 † | tiny | feature2 | 12.35 | 5.00 |  |" in md
    assert "| byol_resnet50_8xb32-accum16-coslr-200e_in1k | svm_voc07_mmselfsup | feature5 | 86.31 | 45.37 |" in md


def test_records_frame_has_every_metric():
    frame = records_frame(load_records(GOLDEN / "records"))
    assert len(frame) == sum(len(json.loads(p.read_text())["metrics"]) for p in (GOLDEN / "records").glob("*.json"))


def test_make_tables_cli(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts/make_tables.py"), "--records", str(GOLDEN / "records"),
                          "--out", str(tmp_path / "zoo.md"), "--all-csv", str(tmp_path / "all.csv")],
                         capture_output=True, text=True, check=True)
    assert "## VOC SVM / Low-shot SVM" in out.stdout
    assert (tmp_path / "zoo.md").read_text() == (GOLDEN / "model_zoo.md").read_text()
    assert (tmp_path / "all.csv").read_text().startswith("model,protocol,dataset")
    bad = subprocess.run([sys.executable, str(REPO / "scripts/make_tables.py"), "--records", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1


# ---------------------------------------------------------------- published rows and the report's plots


PUBLISHED = REPO / "results" / "published"


def _published(**changes):
    record = _record(model="BYOL R50 (paper)", tiny=False, metrics={"svm": 86.31}, details={
        "source": {"ref": "https://example.org/zoo.md", "version": "v1", "table": "VOC SVM"}})
    record["checkpoint"] = {**record["checkpoint"], "format": "published", "sha256": "published:byol", "path": ""}
    record.update(changes)
    return record


def test_a_published_record_must_cite_its_source():
    validate_record(_published())
    for source in ({}, {"ref": "x", "version": "v1"}, {"ref": "", "version": "v1", "table": "t"}):
        with pytest.raises(RecordError, match=r"needs details\.source with \['ref', 'version', 'table'\]"):
            validate_record(_published(details={"source": source}))


def test_published_rows_are_marked_below_the_measured_ones_and_cited(tmp_path):
    md = render_markdown([_record(model="zzz_mine"), _published()])
    voc = md.split("## VOC SVM")[1].split("##")[0]
    rows = [line for line in voc.splitlines() if line.startswith("| ") and "Model" not in line]
    assert rows[0].startswith("| zzz_mine †") and rows[1].startswith("| BYOL R50 (paper) (published) |")
    assert "BYOL R50 (paper) (published)" not in md.split("## ImageNet Linear Evaluation")[1].split("##")[0]
    assert "- BYOL R50 (paper): https://example.org/zoo.md (v1): VOC SVM" in md


def test_committed_published_records_are_valid_and_fill_table_cells():
    from byol_bench.tables import required_fields

    records = load_records(PUBLISHED)
    assert {r["model"] for r in records} >= {BYOL_V05, BYOL_V11, "Supervised torchvision R50 (OpenSelfSup)"}
    fields = required_fields()
    for record in records:
        assert record["checkpoint"]["format"] == "published" and not record["tiny"]
        assert (record["protocol"], record["dataset"]) in fields, record
        assert set(record["metrics"]) & fields[(record["protocol"], record["dataset"])]["metrics"], record
        if record["protocol"] == "linear_avgpool":  # every published AvgPool figure says its setting
            assert avgpool_setting(record) == record["details"]["setting"], record


BYOL_V05 = "BYOL R50 200e (mmselfsup v0.5.0, 2021-12-15)"  # the page this project reproduces
BYOL_V11 = "BYOL R50 200e (mmselfsup v0.11.0)"


def _table(md: str, title: str) -> str:
    return md.split(f"## {title}\n")[1].split("\n## ")[0]


def test_both_published_byol_rows_render_with_their_versions():
    md = render_markdown(load_records(PUBLISHED))
    svm = _table(md, "VOC SVM / Low-shot SVM")
    lowshot = "86.31 | 45.37 | 56.83 | 68.47 | 74.12 | 78.30 | 81.53 | 83.56 | 84.73 |"
    assert f"| {BYOL_V05} (published) | svm_voc07 | feature3 | {lowshot}" in svm  # same figures, other best layer
    assert f"| {BYOL_V11} (published) | svm_voc07 | feature5 | {lowshot}" in svm
    linear = _table(md, "ImageNet Linear Evaluation")
    assert f"| {BYOL_V05} (published) |  |  |  |  |  |  | 67.68 (MoCo) |" in linear  # the page has AvgPool only
    assert (f"| {BYOL_V11} (published) | resnet50_mhead_linear-8xb32-steplr-90e_in1k | 15.16 | 35.26 | 47.77 | 63.10 "
            "| 71.21 | 71.72 (SimSiam) |") in linear
    sources = md.split("## Sources of the published rows")[1]
    page = "https://github.com/open-mmlab/mmselfsup/blob/v0.5.0/docs/algorithms/byol.md"
    assert f"- {BYOL_V05}: {page} (v0.5.0" in sources
    assert f"- {BYOL_V11}: https://github.com/open-mmlab/mmselfsup/blob/v0.11.0/" in sources


def test_avgpool_cells_name_their_setting_for_measured_and_published_rows():
    def avgpool(model, preset, top1, config=None, sha="c"):
        record = _record(model=model, protocol="linear_avgpool", dataset="imagenet", preset=preset, tiny=False,
                         metrics={"top1": top1}, config=config or {})
        record["checkpoint"] = {**record["checkpoint"], "sha256": sha * 64}
        return record

    measured = [avgpool("mine_moco", "linear-avgpool_resnet50_8xb32-steplr-100e_in1k", 68.0, {"setting": "moco"}),
                avgpool("mine_simsiam", "linear-avgpool_resnet50_8xb512-coslr-90e_in1k", 71.9, {"setting": "simsiam"},
                        sha="d"),
                avgpool("mine_unnamed", "my-own-probe", 70.0, sha="e")]
    md = render_markdown(measured + load_records(PUBLISHED))
    linear = _table(md, "ImageNet Linear Evaluation")
    assert "| mine_moco |  |  |  |  |  |  | 68.00 (MoCo) |" in linear
    assert "| mine_simsiam |  |  |  |  |  |  | 71.90 (SimSiam) |" in linear
    assert "| mine_unnamed |  |  |  |  |  |  | 70.00 (setting not stated) |" in linear
    assert f"| {BYOL_V05} (published) |  |  |  |  |  |  | 67.68 (MoCo) |" in linear
    assert "71.72 (SimSiam) |" in linear and "67.58 (MoCo) |" in linear  # BYOL and MoCo v2 at v0.11.0: two settings
    assert "AvgPool settings: (MoCo) SGD lr 30, batch 256, 100 epochs" in md
    assert "AvgPool settings" not in render_markdown([_record()])  # no AvgPool cell: no note


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "configs" / "linear_avgpool").glob("*.yaml")
                                          if not p.stem.startswith("tiny")))
def test_the_preset_name_alone_gives_the_setting_its_config_states(preset):
    import yaml

    stated = yaml.safe_load((REPO / "configs" / "linear_avgpool" / f"{preset}.yaml").read_text())["setting"]
    record = _record(protocol="linear_avgpool", dataset="imagenet", preset=preset, config={}, details={})
    assert avgpool_setting(record) == stated
    assert avgpool_setting(_record(preset="tiny", config={"setting": stated})) == stated


def test_report_links_the_runs_plots_relative_to_the_markdown(tmp_path):
    plot = tmp_path / "runs" / "voc07_svm" / "lowshot.png"
    plot.parent.mkdir(parents=True)
    plot.write_bytes(b"png")
    record = _record(details={"lowshot_plot": str(plot), "gone_plot": str(tmp_path / "missing.png"), "k": 1})
    md = render_markdown([record], link_root=tmp_path / "report")
    assert "- m · voc07_svm / voc07 (tiny): [lowshot](../runs/voc07_svm/lowshot.png)" in md
    assert "missing.png" not in md
    assert "## Plots" not in render_markdown([record])  # no output file: no links


def test_make_tables_cli_adds_published_rows(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts/make_tables.py"), "--records", str(GOLDEN / "records"),
                          "--published"], capture_output=True, text=True, check=True)
    assert "(published)" in out.stdout and "## Sources of the published rows" in out.stdout


def test_summary_quotes_each_runs_headline_figure():
    older = _record(metrics={"svm": 10.0}, created="2026-01-01T00:00:00+0000")
    text = render_summary([older, _record()], [("voc07_svm", "tiny", 41.4, "ok"), ("det_voc", "tiny", 3.0, "FAILED")])
    first, second = text.splitlines()
    assert first.split()[:4] == ["voc07_svm", "tiny", "41", "s"] and first.endswith("ok      SVM mAP 50.00 (voc07)")
    assert second.split() == ["det_voc", "tiny", "3", "s", "FAILED"]


def test_semi_supervised_config_column_names_the_best_cell():
    cell = "resnet50_head10_4xb64-steplr1e-2-20e_in1k-1pct"
    grid = _record(protocol="semi_sup", dataset="imagenet_1pct", preset="resnet50_grid9_4xb64-steplr-20e_in1k-1pct",
                   metrics={"top1": 50.0, "top5": 70.0}, details={"best_cell": {"reference_config": cell}})
    md = render_markdown([grid]).split("## Semi-Supervised Classification")[1]
    assert f"| m † | {cell} | 50.00 | 70.00 |" in md
    plain = render_markdown([_record(protocol="semi_sup", dataset="imagenet_1pct", metrics={"top1": 1.0})])
    assert "| m † | tiny | 1.00 |" in plain.split("## Semi-Supervised Classification")[1]  # no cell: the preset


def test_a_mean_over_trials_shows_its_spread_and_nested_plots_are_linked(tmp_path):
    curve = tmp_path / "trial0_loss.png"
    curve.write_bytes(b"png")
    details = {"num_trials": 5, "std": {"AP": 0.31, "AP50": 0.2}, "trials": [{"loss_plot": str(curve)}]}
    record = _record(protocol="det_voc", dataset="voc0712", metrics={"AP": 53.5, "AP50": 81.3}, details=details)
    md = render_markdown([record], link_root=tmp_path)
    assert "| m † | tiny | 53.50 ± 0.31 | 81.30 ± 0.20 |" in md
    assert "[0 loss](trial0_loss.png)" in md
    one = _record(protocol="det_voc", dataset="voc0712", metrics={"AP": 53.5}, details={**details, "num_trials": 1})
    assert "| m † | tiny | 53.50 |" in render_markdown([one])
