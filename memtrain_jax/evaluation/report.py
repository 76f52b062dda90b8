"""The evaluation report: results.json, the paper's Table 1 and Table 2 layouts, and the plot.

Inputs are finished cells (`cells.CellStore` records): long-QA cells carry sub-EM / EM / F1 as
fractions per (model, mode, length), search cells EM per (model, data set). Tables print them in %
with two decimals, as the paper does; Avg is the unweighted mean over the columns (the paper's), and
is left blank for a row that misses a column.

Rows: one per model and mode, the full-context row of a model before its memory-agent row (Table 1
lists the base model, read in one window, above the memory agents). `report.row_names` renames
them ("base:full_context=Qwen3-4B-Instruct", "memtrain=+MemTrain").

`build_report` computes everything without writing (every process of a multi-process evaluation
does); `save_report` writes it (process 0 alone); `write_report` does both. The workdir may be a
local directory or a `gs://` (or other etils.epath) URL.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath

from memtrain_jax import paths
from memtrain_jax.evaluation import config as config_lib

LONG_QA_TABLE = "table_long_qa.md"
SEARCH_QA_TABLE = "table_search_qa.md"
PLOT = "long_qa_accuracy_vs_length.png"
RESULTS = "results.json"

_MODE_TEXT = {config_lib.FULL_CONTEXT: "full context", config_lib.MEMORY_AGENT: "memory agent",
              "search": "search agent"}
_METRIC_TEXT = {"sub_em": "sub-EM accuracy", "em": "exact match", "f1": "F1"}
_MODE_ORDER = (config_lib.FULL_CONTEXT, config_lib.MEMORY_AGENT)


@dataclasses.dataclass
class Row:
  model: str
  mode: str
  label: str
  cells: dict[str, Mapping]  # column -> cell record

  def values(self, columns: Sequence[str], metric: str) -> list[float | None]:
    return [self.cells[c][metric] if c in self.cells else None for c in columns]

  def average(self, columns: Sequence[str], metric: str) -> float | None:
    values = self.values(columns, metric)
    return None if None in values or not values else float(np.mean(values))


def _label(names: Mapping[str, str], model: str, mode: str, ambiguous: bool) -> str:
  if f"{model}:{mode}" in names:
    return names[f"{model}:{mode}"]
  label = names.get(model, model)
  return f"{label} ({_MODE_TEXT[mode]})" if ambiguous else label


def build_rows(cells: Sequence[Mapping], task: str, models: Sequence[str],
               row_names: Mapping[str, str]) -> list[Row]:
  """The rows of one task's table in model order (full context before memory agent)."""
  by_row: dict[tuple[str, str], dict[str, Mapping]] = {}
  for cell in cells:
    if cell["task"] == task:
      by_row.setdefault((cell["model"], cell["mode"]), {})[cell["column"]] = cell
  rows = []
  for model in models:
    modes = [m for m in _MODE_ORDER + ("search",) if (model, m) in by_row]
    for mode in modes:
      rows.append(Row(model, mode, _label(row_names, model, mode, len(modes) > 1),
                      by_row[(model, mode)]))
  return rows


def _percent(value: float | None) -> str:
  return "–" if value is None else f"{100 * value:.2f}"


def markdown_table(rows: Sequence[Row], columns: Sequence[str], metric: str) -> str:
  """A Markdown table: rows = models, columns + Avg, values in % with two decimals."""
  lines = ["| Model | " + " | ".join(columns) + " | Avg |",
           "|---|" + "---|" * (len(columns) + 1)]
  for row in rows:
    cells = [_percent(v) for v in row.values(columns, metric)]
    cells.append(_percent(row.average(columns, metric)))
    lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _counts(rows: Sequence[Row], key: str) -> str:
  counts = sorted({int(c[key]) for row in rows for c in row.cells.values() if key in c})
  return "/".join(str(c) for c in counts) or "0"


def long_qa_markdown(rows: Sequence[Row], columns: Sequence[str], cfg) -> str:
  agent, lq = cfg.agent, cfg.long_qa
  parts = [f"# {cfg.report.title}: long-text QA (paper Table 1 layout)\n",
           f"RULER-HotpotQA, questions per length: {_counts(rows, 'num_questions')} (source "
           f"`{lq.source}`, from question {lq.question_start}). Memory agent: chunks of "
           f"{agent.chunk_size} tokens, memory <= {agent.memory_max_tokens} tokens; full context: "
           f"centre-truncated to {lq.full_context_max_tokens} tokens. Sampling: temperature "
           f"{cfg.sampling.temperature}, top-p {cfg.sampling.top_p}. Avg is the unweighted mean "
           f"over the lengths.\n"]
  for metric in ("sub_em", "em", "f1"):
    headline = " (headline, MemAgent's metric)" if metric == "sub_em" else ""
    parts.append(f"## {_METRIC_TEXT[metric]} (%){headline}\n")
    parts.append(markdown_table(rows, columns, metric))
  # Only a closed box is an answer (MemAgent's extraction): this explains scores of 0.
  parts.append("## answers with a closed \\boxed{} (%)\n")
  parts.append(markdown_table(rows, columns, "boxed_fraction"))
  return "\n".join(parts)


def search_qa_markdown(rows: Sequence[Row], columns: Sequence[str], cfg) -> str:
  sq = cfg.search_qa
  retriever = sq.retrieval_url or f"BM25 over `{sq.corpus}`"
  parts = [f"# {cfg.report.title}: multi-hop QA with a search tool (paper Table 2 layout)\n",
           f"Tasks per data set: {_counts(rows, 'num_tasks')}, of {sq.questions_per_task} "
           f"questions each; at most {sq.max_turns} turns, top-{sq.topk} passages from {retriever}. EM is "
           f"averaged over the questions of a task, then over tasks; Avg is the unweighted mean "
           f"over the data sets.\n",
           "## exact match (%)\n", markdown_table(rows, columns, "em"),
           "## searches / turns per episode (mean)\n",
           "| Model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
  for row in rows:
    cells = [f"{row.cells[c]['searches_mean']:.2f} / {row.cells[c]['turns_mean']:.2f}"
             if c in row.cells else "–" for c in columns]
    parts.append(f"| {row.label} | " + " | ".join(cells) + " |")
  return "\n".join(parts) + "\n"


def _tokens_text(tokens: float) -> str:
  return f"{tokens / 1024:g}K" if tokens >= 1024 else f"{tokens:g}"


def plot_long_qa(rows: Sequence[Row], columns: Sequence[str], path: epath.PathLike,
                 title: str) -> epath.PathLike:
  """Writes `long_qa_plot_png` to `path` (a local path or an epath URL); returns `path`."""
  data = long_qa_plot_png(rows, columns, title)
  paths.as_path(path).write_bytes(data)
  return path


def long_qa_plot_png(rows: Sequence[Row], columns: Sequence[str], title: str) -> bytes:
  """Sub-EM (%) against the mean context length (log2 axis), one line per model and mode, as a
  PNG file's bytes."""
  try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter
  except ImportError as e:
    raise ImportError("the long-QA plot needs matplotlib: pip install matplotlib (or "
                      "pip install -e .[plots]; --config.report.plot=False skips it)") from e
  # A Figure on the Agg canvas, not pyplot: no global backend state, no display needed.
  fig = Figure(figsize=(7, 4.5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  column_x: dict[str, list[float]] = {}  # every row's mean length of each column
  for row in rows:
    present = [c for c in columns if c in row.cells and "context_tokens_mean" in row.cells[c]]
    points = [(row.cells[c]["context_tokens_mean"], 100 * row.cells[c]["sub_em"]) for c in present]
    for c, (x, _) in zip(present, points):
      column_x.setdefault(c, []).append(x)
    if points:
      xs, ys = zip(*points)
      style = "--" if row.mode == config_lib.FULL_CONTEXT else "-"
      ax.plot(xs, ys, style, marker="o", label=row.label)
  ax.set_xscale("log", base=2)
  if column_x:
    # One tick per column, at its mean length and named as the table names it: powers of two
    # alone may leave a short range (e.g. 540 to 1060 tokens) with a single labelled tick.
    ax.set_xticks([sum(v) / len(v) for v in column_x.values()], list(column_x))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
  else:
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tokens_text(v)))
  ax.set_xlabel("context length (tokens, mean over questions)")
  ax.set_ylabel("sub-EM accuracy (%)")
  ax.set_ylim(-2, 102)
  ax.set_title(f"{title}: RULER-HotpotQA")
  ax.grid(True, alpha=0.3)
  if rows:
    ax.legend(fontsize=8)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  return buffer.getvalue()


def _row_json(row: Row, columns: Sequence[str], metrics: Sequence[str]) -> dict:
  return {"label": row.label, "model": row.model, "mode": row.mode,
          "cells": {c: dict(row.cells[c]) for c in columns if c in row.cells},
          "avg": {m: row.average(columns, m) for m in metrics}}


@dataclasses.dataclass
class Report:
  """The report of some finished cells, built but not written."""
  results: dict  # what results.json holds (and `runner.run_eval` returns)
  texts: dict[str, str]  # file name -> contents of the Markdown tables, in writing order
  plot: tuple[list[Row], list[str]] | None  # the long-QA plot's rows and columns, when wanted
  title: str


def build_report(cells: Sequence[Mapping], cfg) -> Report:
  """The results dict, the tables' text and the plot's data of `cells`; writes nothing."""
  models = [name for name, _ in config_lib.model_specs(cfg)]
  row_names = dict(config_lib.row_name_specs(cfg))
  files: dict[str, str] = {}
  texts: dict[str, str] = {}
  plot = None
  results: dict = {"title": cfg.report.title, "config": cfg.to_dict()}
  if cfg.long_qa.enabled:
    columns = config_lib.length_labels(cfg)
    rows = build_rows(cells, "long_qa", models, row_names)
    texts[LONG_QA_TABLE] = long_qa_markdown(rows, columns, cfg)
    files["table_long_qa"] = LONG_QA_TABLE
    if cfg.report.plot:
      plot = (rows, columns)
      files["plot_long_qa"] = PLOT
    results["long_qa"] = {"metric": "sub_em", "columns": columns,
                          "rows": [_row_json(r, columns, ("sub_em", "em", "f1")) for r in rows]}
  if cfg.search_qa.enabled:
    columns = [name for name, _ in config_lib.dataset_specs(cfg)]
    rows = build_rows(cells, "search_qa", models, row_names)
    texts[SEARCH_QA_TABLE] = search_qa_markdown(rows, columns, cfg)
    files["table_search_qa"] = SEARCH_QA_TABLE
    results["search_qa"] = {"metric": "em", "columns": columns,
                            "rows": [_row_json(r, columns, ("em",)) for r in rows]}
  results["files"] = files
  results["predictions"] = sorted(c["predictions"] for c in cells)
  return Report(results=results, texts=texts, plot=plot, title=cfg.report.title)


def save_report(built: Report, workdir: epath.PathLike) -> None:
  """Writes the tables, the plot and results.json (last) into `workdir`."""
  workdir = paths.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  for name, text in built.texts.items():
    (workdir / name).write_text(text, encoding="utf-8")
  if built.plot is not None:
    rows, columns = built.plot
    plot_long_qa(rows, columns, workdir / PLOT, built.title)
  (workdir / RESULTS).write_text(json.dumps(built.results, indent=2, ensure_ascii=False),
                                 encoding="utf-8")


def write_report(cells: Sequence[Mapping], cfg, workdir: epath.PathLike) -> dict:
  """Writes results.json, the Markdown tables and the plot; returns the results dict."""
  built = build_report(cells, cfg)
  save_report(built, workdir)
  return built.results
