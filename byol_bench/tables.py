"""Model-zoo tables rendered from result records (never edited by hand).

The layout is the seed README's (mmselfsup ``configs/selfsup/byol/README.md``, PROTOCOLS.md B §7): one row per
checkpoint, a blank cell where a protocol did not run. A row whose records come from tiny (embedded-data) runs is
marked with a dagger: those numbers check the pipeline, they are not comparable with published ones. Rehearsal
records (``rehearsal: true``: two optimizer steps of a full preset, byol_bench.rehearsal) are no results: the tables
leave them out, in every format, and the report says how many it left out.

This module is the contract between the runners and the tables: a record fills a cell when its ``protocol`` and
``dataset`` are the column's and its ``metrics`` (or, where marked, ``details``) hold the column's key.
:data:`TABLES` below is the source of truth; :func:`required_fields` derives the list, which reads today:

=================  ===========================================  ==================================================
protocol           dataset                                      metrics (``details`` keys in brackets)
=================  ===========================================  ==================================================
voc07_svm          voc07                                        svm, k1, k2, k4, k8, k16, k32, k64, k96
                                                                [best_layer: feat1..feat5]
linear_mhead       imagenet, inat18, places205                  feat1, feat2, feat3, feat4, feat5 (top-1, %)
linear_avgpool     imagenet, inat18, places205                  top1
semi_sup           imagenet_1pct, imagenet_10pct                top1, top5
det_voc            voc0712                                      AP, AP50
det_coco           coco                                         bbox_AP, bbox_AP50, bbox_AP75, segm_AP, segm_AP50,
                                                                segm_AP75
segmentation       voc12aug, cityscapes                         mIoU
=================  ===========================================  ==================================================

The config column shows the record's ``preset`` of the table's ``config_source`` protocol.

AvgPool cells name their linear-probe setting, "(MoCo)" or "(SimSiam)" (:func:`avgpool_setting`, from the record's
``details``/``config`` ``setting`` or else its preset name), for measured and published rows alike: BYOL scores about 4
points higher in the SimSiam setting (mmselfsup: 67.68 vs 71.72), so the two are never set side by side unnamed.

Published rows: a record whose checkpoint ``format`` is ``"published"`` (``results/published/``) holds a number read
from a paper or a model-zoo page, with its source in ``details["source"]`` (``ref``, ``version``, ``table``). It
renders as a row marked "(published)" below the measured rows, and the sources are listed under the tables, so a
checkpoint is seen next to the reference on the same protocol.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byol_bench.fileio import atomic_write_text
from byol_bench.protocols import PRETRAIN, PROTOCOLS

TINY_MARK = " †"
PUBLISHED_FORMAT = "published"
PUBLISHED_MARK = " (published)"
PUBLISHED_DIR = Path(__file__).resolve().parents[1] / "results" / "published"  # published rows, one record each
PLOT_SUFFIX = "_plot"  # details keys ending so hold the path of a plot the report links
TINY_NOTE = "† tiny embedded data: checks the pipeline end to end; not comparable with published numbers."
REHEARSAL_NOTE = ("{n} rehearsal record(s) left out: a rehearsal trains two optimizer steps of a full preset "
                  "(scripts/rehearse.sh), its figures are no results.")

# The AvgPool linear probe's two reference settings (PROTOCOLS.md B §3.3): cell label, what it is.
AVGPOOL_SETTINGS: dict[str, tuple[str, str]] = {
    "moco": ("MoCo", "SGD lr 30, batch 256, 100 epochs, lr x0.1 at 60 and 80"),
    "simsiam": ("SimSiam", "LARS lr 1.6, batch 4096, cosine, 90 epochs"),
}
# Preset names of each setting, this suite's (linear-avgpool_resnet50_8xb32-steplr-100e_in1k,
# linear-avgpool_resnet50_8xb512-coslr-90e_in1k) and mmselfsup's (resnet50_linear-8xb32-steplr-100e_in1k, ...): for
# records that do not name their setting (published rows, hand-written ones).
_SETTING_PRESETS = (("moco", "steplr-100e"), ("simsiam", "coslr-90e"))
UNKNOWN_SETTING = "setting not stated"
AVGPOOL_NOTE = ("AvgPool settings: " + "; ".join(f"({label}) {what}" for label, what in AVGPOOL_SETTINGS.values())
                + ". BYOL scores about 4 points higher in the SimSiam setting: compare AvgPool figures of one setting.")


@dataclass(frozen=True)
class Column:
    """One metric cell: which record (protocol, dataset) and which metric (or ``details`` key) fills it."""

    header: str
    protocol: str
    dataset: str
    metric: str
    from_details: bool = False
    names_setting: bool = False  # the cell says which linear-probe setting its number comes from (AvgPool)


@dataclass(frozen=True)
class Table:
    """A seed table: its title, the record whose preset fills the config column, and the metric columns."""

    title: str
    config_header: str
    config_source: tuple[str, str]
    columns: tuple[Column, ...]
    config_detail: str = ""  # dotted details key naming the config better than the preset (the grid's best cell)


def _cols(protocol: str, dataset: str, pairs: list[tuple[str, str]]) -> tuple[Column, ...]:
    return tuple(Column(header, protocol, dataset, metric) for header, metric in pairs)


# Records say "feat5"; the seed tables say "feature5" (1 = stem, 2-5 = the ResNet stages).
_FEATURE_LABELS = {f"feat{i}": f"feature{i}" for i in range(1, 6)}
_FEATURES = [(f"Feature{i}", f"feat{i}") for i in range(1, 6)]
_LOWSHOT = [(f"k={k}", f"k{k}") for k in (1, 2, 4, 8, 16, 32, 64, 96)]


def _linear(title: str, dataset: str) -> Table:
    return Table(title, "Config", ("linear_mhead", dataset),
                 (*_cols("linear_mhead", dataset, _FEATURES),
                  Column("AvgPool", "linear_avgpool", dataset, "top1", names_setting=True)))


def _segmentation(title: str, dataset: str) -> Table:
    return Table(title, "Config", ("segmentation", dataset), _cols("segmentation", dataset, [("mIOU", "mIoU")]))


TABLES: tuple[Table, ...] = (
    Table("VOC SVM / Low-shot SVM", "Config setting", ("voc07_svm", "voc07"),
          (Column("Best Layer", "voc07_svm", "voc07", "best_layer", from_details=True),
           *_cols("voc07_svm", "voc07", [("SVM", "svm"), *_LOWSHOT]))),
    _linear("ImageNet Linear Evaluation", "imagenet"),
    _linear("iNaturalist2018 Linear Evaluation", "inat18"),
    _linear("Places205 Linear Evaluation", "places205"),
    Table("Semi-Supervised Classification", "Fine-tuned Config", ("semi_sup", "imagenet_1pct"),
          (*_cols("semi_sup", "imagenet_1pct", [("Top-1 (%) 1%", "top1"), ("Top-5 (%) 1%", "top5")]),
           *_cols("semi_sup", "imagenet_10pct", [("Top-1 (%) 10%", "top1"), ("Top-5 (%) 10%", "top5")])),
          config_detail="best_cell.reference_config"),  # the seed names the cell's config file
    Table("Detection: Pascal VOC 2007 + 2012", "Config", ("det_voc", "voc0712"),
          _cols("det_voc", "voc0712", [("mAP", "AP"), ("AP50", "AP50")])),
    Table("Detection: COCO2017", "Config", ("det_coco", "coco"),
          _cols("det_coco", "coco", [("mAP(Box)", "bbox_AP"), ("AP50(Box)", "bbox_AP50"), ("AP75(Box)", "bbox_AP75"),
                                     ("mAP(Mask)", "segm_AP"), ("AP50(Mask)", "segm_AP50"),
                                     ("AP75(Mask)", "segm_AP75")])),
    _segmentation("Segmentation: Pascal VOC 2012 + Aug", "voc12aug"),
    _segmentation("Segmentation: Cityscapes", "cityscapes"),
)


# The one figure per protocol that the end-of-run summary quotes: (metric, how to say it).
HEADLINE: dict[str, tuple[str, str]] = {p.name: p.headline for p in (PRETRAIN, *PROTOCOLS)}


def render_summary(records: list[dict[str, Any]], runs: list[tuple[str, str, float, str]]) -> str:
    """One line per protocol run of an invocation: its preset, wall time, status and headline figure.

    Args:
        records: the records the runs wrote (the newest one of a protocol and preset is quoted).
        runs: ``(protocol, preset, seconds, status)`` in the order they ran.
    """
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in sorted((r for r in records if not r["rehearsal"]), key=lambda r: r["created"]):
        newest[(record["protocol"], record["preset"])] = record
    lines = []
    for protocol, preset, seconds, status in runs:
        record = newest.get((protocol, preset))
        figure = ""
        if record is not None and protocol in HEADLINE:
            metric, said = HEADLINE[protocol]
            value = record["metrics"].get(metric)
            figure = f"{said} {value:.2f} ({record['dataset']})" if value is not None else ""
        lines.append(f"{protocol:<15} {preset:<20} {seconds:>6.0f} s  {status:<7} {figure}".rstrip())
    return "\n".join(lines)


def write_timings(path: str | os.PathLike, runs: list[tuple[str, str, float, str]]) -> None:
    """``runs`` as the suite's ``run_times.tsv``: protocol, preset, seconds, status; one run a line."""
    atomic_write_text(path, "".join(f"{p}\t{preset}\t{s:.0f}\t{status}\n" for p, preset, s, status in runs))


def read_timings(path: str | os.PathLike) -> list[tuple[str, str, float, str]]:
    """The runs of a ``run_times.tsv`` (:func:`write_timings`)."""
    return [(p, preset, float(s), status) for p, preset, s, status in
            (line.split("\t") for line in Path(path).read_text().splitlines() if line.strip())]


def required_fields() -> dict[tuple[str, str], dict[str, set[str]]]:
    """What a record must hold to fill its cells: ``{(protocol, dataset): {"metrics": {...}, "details": {...}}}``."""
    fields: dict[tuple[str, str], dict[str, set[str]]] = {}
    for table in TABLES:
        for column in table.columns:
            entry = fields.setdefault((column.protocol, column.dataset), {"metrics": set(), "details": set()})
            entry["details" if column.from_details else "metrics"].add(column.metric)
    return fields


def _latest_by_key(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Newest record per (checkpoint sha256, protocol, dataset)."""
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: r["created"]):
        latest[(record["checkpoint"]["sha256"], record["protocol"], record["dataset"])] = record
    return latest


def _row_labels(records: list[dict[str, Any]]) -> dict[str, str]:
    """Checkpoint sha256 -> row label (model name; sha prefix added when two checkpoints share a name)."""
    names: dict[str, str] = {}
    for record in sorted(records, key=lambda r: r["created"]):
        names[record["checkpoint"]["sha256"]] = record["model"]
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {sha: (f"{name} ({sha[:8]})" if counts[name] > 1 else name) for sha, name in names.items()}


def table_rows(table: Table, records: list[dict[str, Any]]) -> list[list[str]]:
    """Rows (strings) of ``table``: header row first, then one row per checkpoint, blanks where nothing ran.
    Rehearsal records are left out (the one place every table format passes)."""
    records = [r for r in records if not r["rehearsal"]]
    latest = _latest_by_key(records)
    labels = _row_labels(records)
    tiny = {r["checkpoint"]["sha256"] for r in records if r["tiny"]}
    published = {r["checkpoint"]["sha256"] for r in records if is_published(r)}
    rows = [["Model", table.config_header, *(c.header for c in table.columns)]]
    for sha, label in sorted(labels.items(), key=lambda item: (item[0] in published, item[1])):
        config_record = latest.get((sha, *table.config_source))
        cells = []
        for column in table.columns:
            record = latest.get((sha, column.protocol, column.dataset))
            cells.append(_cell(record, column))
        if sha in published and not any(cells):
            continue  # a published source that has no figure for this table
        mark = TINY_MARK if sha in tiny else PUBLISHED_MARK if sha in published else ""
        rows.append([label + mark, _config_cell(config_record, table.config_detail), *cells])
    return rows


def _config_cell(record: dict[str, Any] | None, detail: str) -> str:
    """The config column: the record's ``details`` value at the dotted key ``detail`` if it has one, else its preset."""
    if record is None:
        return ""
    value: Any = record["details"]
    for key in detail.split(".") if detail else ():
        value = value.get(key) if isinstance(value, dict) else None
    return str(value) if detail and value is not None else record["preset"]


def is_published(record: dict[str, Any]) -> bool:
    """A record of published numbers (``results/published/``), not of a run."""
    return record["checkpoint"]["format"] == PUBLISHED_FORMAT


def avgpool_setting(record: dict[str, Any]) -> str | None:
    """The linear-probe setting (a key of :data:`AVGPOOL_SETTINGS`) a record's number comes from, None if unknown.

    The record's ``details`` or ``config`` ``setting`` (what ``benchmarks/linear/avgpool.py`` writes), else its preset
    name: ``...steplr-100e...`` is the MoCo setting, ``...coslr-90e...`` the SimSiam one.
    """
    for where in (record["details"], record["config"]):
        if where.get("setting") in AVGPOOL_SETTINGS:
            return where["setting"]
    for setting, needle in _SETTING_PRESETS:
        if needle in record["preset"]:
            return setting
    return None


def _cell(record: dict[str, Any] | None, column: Column) -> str:
    if record is None:
        return ""
    source = record["details"] if column.from_details else record["metrics"]
    value = source.get(column.metric)
    if value is None:
        return ""
    if isinstance(value, float):
        # a mean over several trials (details: num_trials > 1, std per metric) shows its spread
        std = record["details"].get("std", {}).get(column.metric) if record["details"].get("num_trials", 1) > 1 \
            else None
        text = f"{value:.2f} ± {std:.2f}" if std is not None else f"{value:.2f}"
        if column.names_setting:
            setting = avgpool_setting(record)
            text += f" ({AVGPOOL_SETTINGS[setting][0] if setting else UNKNOWN_SETTING})"
        return text
    return _FEATURE_LABELS.get(str(value), str(value))


def render_markdown(records: list[dict[str, Any]], link_root: str | os.PathLike | None = None,
                    runs: list[tuple[str, str, float, str]] | None = None) -> str:
    """All seed tables as markdown sections; then the runs of the invocation, the sources of published rows and the
    runs' plots.

    Args:
        records: measured and published records.
        link_root: the folder the markdown file is written to: plot links are made relative to it (so the report
            reads on GitHub or in any viewer); None lists no plots.
        runs: ``(protocol, preset, seconds, status)`` of the invocation that wrote the report (see
            :func:`render_summary`); the runs that did not end with a record are named as failed.
    """
    parts = ["# Model zoo", ""]
    settings_named = False
    for table in TABLES:
        rows = table_rows(table, records)
        parts += [f"## {table.title}", "", "| " + " | ".join(rows[0]) + " |",
                  "|" + "|".join("---" for _ in rows[0]) + "|"]
        parts += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        parts.append("")
        named = [i for i, column in enumerate(table.columns, start=2) if column.names_setting]
        settings_named = settings_named or any(row[i] for row in rows[1:] for i in named)
    if any(r["tiny"] and not r["rehearsal"] for r in records):
        parts += [TINY_NOTE, ""]
    rehearsals = sum(r["rehearsal"] for r in records)
    if rehearsals:
        parts += [REHEARSAL_NOTE.format(n=rehearsals), ""]
    if settings_named:
        parts += [AVGPOOL_NOTE, ""]
    if runs:
        parts += ["## Runs", "", "```", render_summary(records, runs), "```", ""]
        failed = [f"{protocol} ({preset})" for protocol, preset, _, status in runs if status != "ok"]
        if failed:
            parts += [f"**FAILED: {', '.join(failed)}**: their cells above are blank or older; the logs say why.", ""]
    parts += _sources_section(records)
    if link_root is not None:
        parts += _plots_section(records, Path(link_root))
    return "\n".join(parts)


def _sources_section(records: list[dict[str, Any]]) -> list[str]:
    """One line per published model: where its numbers were read (page, version) and from which tables."""
    cited: dict[str, dict[tuple[str, str], list[str]]] = {}
    for record in sorted((r for r in records if is_published(r)), key=lambda r: (r["protocol"], r["dataset"])):
        src = record["details"]["source"]
        cited.setdefault(record["model"], {}).setdefault((src["ref"], src["version"]), []).append(src["table"])
    lines = [f"- {model}: " + " — ".join(f"{ref} ({version}): {'; '.join(tables)}"
                                         for (ref, version), tables in by_ref.items())
             for model, by_ref in sorted(cited.items())]
    return ["## Sources of the published rows", "", *lines, ""] if lines else []


def _plots_section(records: list[dict[str, Any]], link_root: Path) -> list[str]:
    lines = []
    for record in sorted((r for r in records if not is_published(r) and not r["rehearsal"]),
                         key=lambda r: (r["model"], r["protocol"], r["dataset"], r["preset"])):
        paths: dict[str, str] = {}  # a plot named twice (a top-level copy of trial 0's) is linked once
        for label, path in _plot_paths(record["details"]):
            paths.setdefault(path, label)
        links = [f"[{label}]({Path(os.path.relpath(path, link_root)).as_posix()})"
                 for path, label in paths.items() if Path(path).is_file()]
        if links:
            lines.append(f"- {record['model']} · {record['protocol']} / {record['dataset']} "
                         f"({record['preset']}): " + ", ".join(links))
    return ["## Plots", "", *lines, ""] if lines else []


def _plot_paths(details: Any, where: str = "") -> list[tuple[str, str]]:
    """``(label, path)`` of every ``*_plot`` key in ``details``, nested ones too (per-trial curves)."""
    found: list[tuple[str, str]] = []
    items = details.items() if isinstance(details, dict) else enumerate(details) if isinstance(details, list) else ()
    for key, value in items:
        if isinstance(key, str) and key.endswith(PLOT_SUFFIX) and isinstance(value, str):
            found.append((f"{where}{key.removesuffix(PLOT_SUFFIX).replace('_', ' ')}", value))
        elif isinstance(value, (dict, list)):
            found += _plot_paths(value, f"{where}{key} " if isinstance(key, int) else where)
    return found


def render_csv(records: list[dict[str, Any]]) -> str:
    """All seed tables in one CSV, with a leading ``table`` column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for table in TABLES:
        rows = table_rows(table, records)
        writer.writerow(["table", *rows[0]])
        for row in rows[1:]:
            writer.writerow([table.title, *row])
    return buffer.getvalue()


def records_frame(records: list[dict[str, Any]]) -> Any:
    """A pandas DataFrame with one row per (record, metric): the flat export of every result."""
    import pandas as pd  # imported lazily: only the CSV export needs pandas

    rows = [
        {"model": r["model"], "protocol": r["protocol"], "dataset": r["dataset"], "preset": r["preset"],
         "metric": name, "value": value, "checkpoint_sha256": r["checkpoint"]["sha256"], "tiny": r["tiny"],
         "rehearsal": r["rehearsal"], "config_hash": r["config_hash"], "git_commit": r["git_commit"],
         "created": r["created"]}
        for r in records for name, value in sorted(r["metrics"].items())
    ]
    return pd.DataFrame(rows, columns=["model", "protocol", "dataset", "preset", "metric", "value",
                                       "checkpoint_sha256", "tiny", "rehearsal", "config_hash", "git_commit",
                                       "created"])
