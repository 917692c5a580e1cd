"""Every table and figure of both papers, our computed rows beside the reported ones (`cnf tables`).

Reads each result as its metrics file and its info file: ``<metrics>/eval/<exp>.json`` + ``<info>/eval/<exp>.json``
(`cnf evaluate`: numbers; labels, config, temperature, run id, curves) and ``<metrics>/score/<name>.json`` +
``<info>/score/<name>.json`` (`cnf score`: the bicubic rows of Winkler Table 2 and the "Human" row of Table 3,
computed rather than cited). With the params (``expected_results``), every experiment whose ``table`` names a
table and every ``scores`` entry must have both files: a missing one is an error naming it, never a silently
dropped row; every computed row must cite an MLflow run id the tracking store has. Writes
``tables/{winkler_table1..3, cglow_table1..5}.{md,csv,tex}`` plus ``tables/README.md``. Rows are long-format
(one row per method and dataset/size) so that each computed row carries exactly one ``mlflow_run_id``; the
``source`` column says "reported (Winkler et al. 2019, Table N)" or "computed (<profile> profile)". The papers'
numbers come only from :mod:`pipelines.reporting.reported`.

Figures (PNG, matplotlib Agg) in ``figures/``: the DRIVE PR curves and PR sample scatter (Winkler Figure 5) and
the training likelihood curves of each paper's runs from the MLflow metric history (c-Glow Figure 6).
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipelines.io import write_text
from pipelines.reporting.reported import TABLES, table_names

TABLE_NAMES = tuple(TABLES)
DATASET_NAMES = {"imagenet32": "ImageNet32", "imagenet64": "ImageNet64", "set5": "Set5", "set14": "Set14",
                 "bsd100": "BSD100", "drive": "DRIVE"}
SR_BENCHMARKS = ("set5", "set14", "bsd100")
BOOKKEEPING = ("source", "profile", "experiment", "mlflow_run_id", "notes")
HISTORY_KEYS = ("train_nll", "train_bpd")  # logged by the training worker (pipelines/training/worker.py)


# ---------------------------------------------------------------------------------------------------- inputs


def read_json(path: str | Path) -> dict:
    """One JSON object; a file that is not valid JSON is an error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def load_json_folder(folder: str | Path) -> list[dict]:
    """Every ``*.json`` in ``folder`` (sorted by name), each with ``_file``; invalid JSON is an error naming it."""
    folder = Path(folder)
    return [{**read_json(path), "_file": str(path)}
            for path in (sorted(folder.glob("*.json")) if folder.is_dir() else [])]


def merge_result(kind: str, metrics: Mapping, info: Mapping) -> dict:
    """One result as the tables read it: the info file with the metrics put back where they were measured
    (``eval``: ``splits.<split>.<metric>``; ``score``: top level)."""
    if kind == "score":
        return {**info, **metrics}
    splits = {name: dict(s) for name, s in (info.get("splits") or {}).items()}
    for name, values in metrics.items():
        splits.setdefault(name, {}).update(values)
    return {**info, "splits": splits}


def missing_files(metrics_dir: str | Path, info_dir: str | Path, kind: str, names: Iterable[str]) -> list[str]:
    """The metrics and info files of the ``kind`` results ``names`` that are not there."""
    return [str(Path(folder) / kind / f"{name}.json") for name in names for folder in (metrics_dir, info_dir)
            if not (Path(folder) / kind / f"{name}.json").is_file()]


def load_results(metrics_dir: str | Path, info_dir: str | Path, kind: str,
                 names: Iterable[str] | None = None) -> list[dict]:
    """The ``kind`` (``eval`` | ``score``) results: ``names`` (each must have its metrics and its info file, else
    ``FileNotFoundError`` naming the missing ones), or every metrics file there is when ``names`` is None."""
    metrics_dir, info_dir = Path(metrics_dir) / kind, Path(info_dir) / kind
    if names is None:
        names = [p.stem for p in sorted(metrics_dir.glob("*.json"))] if metrics_dir.is_dir() else []
    names = list(names)
    missing = missing_files(metrics_dir.parent, info_dir.parent, kind, names)
    if missing:
        raise FileNotFoundError(f"missing results: {', '.join(missing)}")
    return [{**merge_result(kind, read_json(metrics_dir / f"{n}.json"), read_json(info_dir / f"{n}.json")),
             "_file": str(metrics_dir / f"{n}.json")} for n in names]


def expected_results(params) -> dict[str, list[str]]:
    """``{"eval": experiments whose table names a table, "score": the scores entries}``: the results whose rows
    the tables must have (``Params`` of params.yaml)."""
    evals = [name for name, exp in params.experiments.items() if exp.table]
    return {"eval": evals, "score": list(params.sections.get("scores") or {})}


def _tables_of(ev: Mapping) -> list[str]:
    tables = ev.get("tables") or ev.get("table") or []
    return [tables] if isinstance(tables, str) else list(tables)


def method_label(ev: Mapping, table: str) -> str:
    """The paper's row name for an experiment: CNF / CNF uniform / factorized baseline / c-Glow."""
    model = ev.get("model") or {}
    family = model.get("family")
    if family == "cnf":
        return "CNF uniform" if model.get("dequantization") == "uniform" else "CNF"
    if family == "cglow":  # Winkler's conditional priors on c-Glow are a variant, not the paper's c-Glow
        return "c-Glow (conditional priors)" if model.get("priors") == "conditional" else "c-Glow"
    if family == "factorized":
        return {"winkler_table1": "factorized LL", "winkler_table2": "LL Baseline",
                "winkler_table3": "Factored"}.get(table, "factorized")
    return str(family)


def dataset_label(name: str | None) -> str:
    return DATASET_NAMES.get(str(name).lower(), str(name))


def paper_size(experiment: str) -> str | None:
    """The c-Glow row an experiment stands for, from its name (``horses64_cglow`` -> ``64x64``)."""
    m = re.search(r"(32|64|128)(?!\d)", experiment)
    return f"{m.group(1)}x{m.group(1)}" if m else None


# ------------------------------------------------------------------------------------------- computed rows


def _num(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _minutes(seconds) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def machine_label(machine: Mapping | None) -> str:
    """``"AMD EPYC, 2 CPUs"`` (+ the GPU) from a recorded ``tracking.machine()``; ``""`` when none was recorded."""
    if not machine:
        return ""
    label = f"{machine.get('cpu') or 'CPU'}, {machine.get('cpus_usable') or machine.get('cpus')} CPUs"
    if machine.get("cpu_capability"):  # recorded since the cpu profile ran on both AVX2 and AVX512-BF16 VMs
        label += f" ({machine['cpu_capability']}{', bf16' if machine.get('bfloat16_native') else ''})"
    return f"{label}, {machine['gpu']}" if machine.get("gpu") else label


def cost_note(ev: Mapping) -> str | None:
    """What an evaluated row cost, from its info file: ``trained 4000 steps in 22.0 min (11.5 samples/s)``,
    the evaluation's wall time, and the machine (``None`` when neither was recorded)."""
    parts = []
    train = ev.get("training") or {}
    if train.get("wall_s") is not None:
        rate = train.get("samples_per_s")
        parts.append(f"trained {train.get('steps', '?')} steps in {_minutes(float(train['wall_s']))}"
                     + (f" ({float(rate):.1f} samples/s)" if rate is not None else ""))
    evaluation = ev.get("evaluation") or {}
    if evaluation.get("wall_s") is not None:
        parts.append(f"evaluated in {_minutes(float(evaluation['wall_s']))}")
    machine = machine_label(train.get("machine") or evaluation.get("machine"))
    if not parts:
        return None
    return ", ".join(parts) + (f" on {machine}" if machine else "")


def _row(ev: Mapping, source: str, **fields) -> dict:
    notes = "; ".join(filter(None, [fields.pop("notes", None), cost_note(ev)])) or None
    return {**fields, **({"notes": notes} if notes else {}), "source": source, "profile": ev.get("profile"),
            "experiment": ev.get("experiment"), "mlflow_run_id": ev.get("mlflow_run_id")}


def _temperature_note(ev: Mapping) -> str:
    selection = ev.get("temperature_selection")
    if selection:
        return (f"temperature {selection['temperature']:g} chosen by {selection['metric']} on "
                f"{selection.get('dataset')} {selection.get('split')}")
    return f"temperature {ev.get('temperature')} from eval.temperature (no sweep selection)"


def _residual_note(ev: Mapping) -> str | None:
    """A flow that models ``y - a x`` (``model.residual``) instead of ``y``: the paper's SR flows model ``y``."""
    a = (ev.get("model") or {}).get("residual")
    if not a:
        return None
    scaled = "" if float(a) == 1.0 else f"{float(a):g} "
    return f"the flow models y - {scaled}bicubic(x) (residual learning; paper: y itself)"


def computed_rows(table: str, evals: Iterable[Mapping], scores: Iterable[Mapping]) -> list[dict]:
    """Our rows of ``table`` from evaluation results and scores of methods that need no training."""
    rows: list[dict] = []
    for ev in evals:
        if table not in _tables_of(ev):
            continue
        source = f"computed ({ev.get('profile', '?')} profile)"
        splits = ev.get("splits") or {}
        primary = splits.get(ev.get("primary")) or (next(iter(splits.values())) if splits else {})
        label = method_label(ev, table)
        if table == "winkler_table1":
            dataset = (ev.get("data") or {}).get("dataset")
            rows.append(_row(ev, source, dataset=dataset_label(dataset), method=label, bpd=_num(primary.get("bpd")),
                             notes=_residual_note(ev)))
        elif table == "winkler_table2":
            for name, s in splits.items():
                ds = str(s.get("dataset", name)).lower()
                if ds in SR_BENCHMARKS:
                    rows.append(_row(ev, source, dataset=dataset_label(ds), method=label, bpd=_num(s.get("bpd")),
                                     psnr=_num(s.get("psnr")), ssim=_num(s.get("ssim")),
                                     temperature=_num(ev.get("temperature")),
                                     notes="; ".join(filter(None, [_temperature_note(ev), _residual_note(ev)]))))
        elif table == "winkler_table3":
            # Winkler Table 3: mean +/- std over runs (train.seeds); one run leaves the std columns empty.
            n_runs = int(primary.get("n_runs") or 1)
            rows.append(_row(ev, source, method=label, f1=_num(primary.get("f1")), f1_std=_num(primary.get("f1_std")),
                             bpd=_num(primary.get("bpd")), bpd_std=_num(primary.get("bpd_std")),
                             notes=f"mean +/- std over {n_runs} runs (train.seeds)" if n_runs > 1 else
                             "one run (train.seeds: 1): no std"))
        elif table in ("cglow_table1", "cglow_table2"):
            size = (ev.get("data") or {}).get("size")
            metric = "iou" if table == "cglow_table1" else "spa"
            row = _row(ev, source, image_size=f"{size}x{size}" if size else "native", method=label,
                       **{metric: _num(primary.get(metric))},
                       **({"iou_fg": _num(primary.get("iou_fg"))} if table == "cglow_table1" else {}))
            stand_in = paper_size(str(ev.get("experiment", "")))
            if stand_in and size and stand_in != f"{size}x{size}":
                row["notes"] = "; ".join(filter(None, [f"{ev.get('profile')} profile: {size}x{size} stands for the "
                                                       f"paper's {stand_in} row", row.get("notes")]))
            if table == "cglow_table2" and primary.get("superpixels") == "slic":
                row["notes"] = "; ".join(filter(None, [row.get("notes"), "SLIC super-pixels (shards carry none)"]))
            rows.append(row)
        elif table in ("cglow_table3", "cglow_table4"):
            rows.append(_row(ev, source, method=label, psnr=_num(primary.get("psnr"))))
        elif table == "cglow_table5":
            if "psnr_block" in primary:
                rows.append(_row(ev, source, method=label, psnr=_num(primary.get("psnr")),
                                 psnr_block=_num(primary.get("psnr_block"))))
            else:  # evaluated before the whole-image PSNR existed: its psnr is the block's
                rows.append(_row(ev, source, method=label, psnr=None, psnr_block=_num(primary.get("psnr")),
                                 notes="evaluated before the whole-image PSNR: block only"))
    for sc in scores:
        source = f"computed (cnf score --method {sc.get('method')}, no training; {sc.get('profile')} profile)"
        if table == "winkler_table2" and sc.get("task") == "sr" and sc.get("method") == "bicubic":
            rows.append({"dataset": dataset_label(sc.get("dataset")), "method": "Bicubic", "bpd": None,
                         "psnr": _num(sc.get("psnr")), "ssim": _num(sc.get("ssim")), "source": source,
                         "profile": sc.get("profile"), "experiment": sc.get("name"),
                         "mlflow_run_id": sc.get("mlflow_run_id")})
        if table == "winkler_table3" and sc.get("task") == "vessel" and sc.get("method") == "second_observer":
            rows.append({"method": "Human", "f1": _num(sc.get("f1")), "source": source, "profile": sc.get("profile"),
                         "experiment": sc.get("name"), "mlflow_run_id": sc.get("mlflow_run_id")})
    return rows


def build_table(table: str, evals: list[Mapping], scores: list[Mapping]):
    """One table as a pandas DataFrame: reported rows, then computed rows, in the paper's column order."""
    import pandas as pd

    spec = TABLES[table]
    reported = [{**r, "source": spec["source"]} for r in spec["rows"]]
    computed = computed_rows(table, evals, scores)
    columns = list(spec["keys"]) + list(spec["metrics"]) + list(spec.get("columns", ())) + list(BOOKKEEPING)
    df = pd.DataFrame(reported + computed)
    for col in columns:
        if col not in df.columns:
            df[col] = None
    return df[columns]


def check_run_ids(frames: Mapping[str, Any]) -> list[str]:
    """Run ids of computed rows that the tracking store does not know."""
    ids = {str(r) for df in frames.values() for r in df["mlflow_run_id"].dropna() if str(r)}
    if not ids:
        return []
    from mlflow import MlflowClient

    from pipelines import tracking

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    missing = []
    for run_id in sorted(ids):
        try:
            client.get_run(run_id)
        except Exception:  # noqa: BLE001 - any lookup failure means the row cannot be traced
            missing.append(run_id)
    return missing


# ---------------------------------------------------------------------------------------------------- output


def _tex_escape(text: str) -> str:
    for char in ("\\", "&", "%", "$", "#", "_", "{", "}"):
        text = text.replace(char, "\\" + char if char != "\\" else "\\textbackslash{}")
    return text


def notes_text(name: str) -> str:
    """A table's notes and, after them, every choice we made where the paper is silent."""
    spec = TABLES[name]
    choices = spec.get("choices") or []
    return spec["notes"] + ("" if not choices else " Our choices where the paper is silent: "
                            + " ".join(f"({i}) {c}" for i, c in enumerate(choices, 1)))


def write_table(name: str, df, out_dir: str | Path) -> list[Path]:
    """``<name>.md`` (title, table, notes), ``<name>.csv`` and ``<name>.tex``, each written atomically."""
    spec = TABLES[name]
    out_dir = Path(out_dir)
    shown = df.astype(object).where(df.notna(), None)  # tabulate prints None (not NaN) as missingval
    md = (f"### {spec['title']}\n\n{shown.to_markdown(index=False, floatfmt='.4g', missingval='-')}\n\n"
          f"Notes: {notes_text(name)}\n")
    tex = df.to_latex(index=False, na_rep="--", float_format=lambda v: f"{v:.4g}", escape=True,
                      caption=_tex_escape(spec["title"]), label=f"tab:{name}")
    paths = [out_dir / f"{name}.md", out_dir / f"{name}.csv", out_dir / f"{name}.tex"]
    write_text(paths[0], md)
    write_text(paths[1], df.to_csv(index=False))
    write_text(paths[2], tex)
    return paths


def comparison(name: str, df) -> list[str]:
    """Markdown lines: each computed row beside the paper's number for the same method and dataset/size."""
    spec = TABLES[name]
    lines = []
    reported = df[df["source"].astype(str).str.startswith("reported")]
    for _, row in df[df["source"].astype(str).str.startswith("computed")].iterrows():
        match = reported[reported["method"].astype(str).str.split(" \\(").str[0] == row["method"]]
        for key in spec["keys"]:
            if key == "method":
                continue
            target = row[key]
            if key == "image_size" and isinstance(row.get("notes"), str) and "stands for the paper's" in row["notes"]:
                target = row["notes"].split("paper's ")[1].split(" row")[0]
            match = match[match[key].astype(str).str.split(" ").str[0] == str(target).split(" ")[0]]
        cells = []
        for metric in spec["metrics"]:
            ours = row.get(metric)
            if ours is None or (isinstance(ours, float) and math.isnan(ours)):
                continue
            theirs = match[metric].dropna().tolist() if len(match) else []
            cells.append(f"{metric} {ours:.4g}" + (f" (paper {theirs[0]:.4g})" if theirs else " (paper: -)"))
        where = ", ".join(str(row[k]) for k in spec["keys"])
        run_id = row.get("mlflow_run_id")
        run_id = run_id if isinstance(run_id, str) and run_id else "none"
        lines.append(f"- {where}: {'; '.join(cells) or 'no metric'} [run `{run_id}`, "
                     f"{row['source']}]")
    return lines or ["- no computed rows yet (run `dvc repro`, or `cnf train/evaluate/score`)"]


def write_readme(frames: Mapping[str, Any], out_dir: str | Path, profile: str, missing_runs: list[str]) -> Path:
    lines = [
        "# Tables of both papers: our numbers beside the reported ones",
        "",
        f"Computed rows come from the **{profile}** profile of `params.yaml`"
        + (" (tiny models, a few training steps, embedded demo data: they check the pipeline, they do not "
           "reproduce the papers)" if profile == "demo" else "") + ". Reported rows are cited from the papers "
        "(`pipelines/reporting/reported.py`); the bicubic rows of Winkler Table 2 and the Human row of Table 3 are computed "
        "by `cnf score` (no training), not cited. Every computed row carries the MLflow run it came from.",
        "",
    ]
    if missing_runs:
        lines += [f"**Warning**: run ids not found in the tracking store: {', '.join(missing_runs)}", ""]
    for name, df in frames.items():
        lines += [f"## {name}: {TABLES[name]['title']}", "", *comparison(name, df), "",
                  f"Files: `{name}.md`, `{name}.csv`, `{name}.tex`. Notes: {TABLES[name]['notes']}", ""]
    lines += ["## Choices where the papers are silent", "",
              "Each is also in its table's notes and next to its parameter in params.yaml / params-paper.yaml "
              "or in the code named.", ""]
    for name in frames:
        for choice in TABLES[name].get("choices") or []:
            lines.append(f"- **{name}**: {choice}")
    lines.append("")
    path = Path(out_dir) / "README.md"
    write_text(path, "\n".join(lines))
    return path


# --------------------------------------------------------------------------------------------------- figures


def metric_histories(run_ids: Mapping[str, str]) -> dict[str, tuple[list[int], list[float]]]:
    """Training likelihood history (``train_nll``, else ``train_bpd``) per label from the MLflow store."""
    if not run_ids:
        return {}
    from mlflow import MlflowClient

    from pipelines import tracking

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    out = {}
    for label, run_id in run_ids.items():
        for key in HISTORY_KEYS:
            try:
                hist = client.get_metric_history(run_id, key)
            except Exception:  # noqa: BLE001 - a run from another store: no curve, not a failure
                hist = []
            if hist:
                hist = sorted(hist, key=lambda m: m.step)
                out[f"{label} ({key})"] = ([m.step for m in hist], [m.value for m in hist])
                break
    return out


def build_figures(evals: list[Mapping], scores: list[Mapping], folder: str | Path) -> list[Path]:
    """Winkler Figure 5 (PR curves, PR sample scatter) and the likelihood curves of both papers."""
    from pipelines.reporting import figures

    folder = Path(folder)
    curves, samples, points = {}, {}, {}
    for ev in evals:
        if "winkler_table3" not in _tables_of(ev):
            continue
        primary = (ev.get("splits") or {}).get(ev.get("primary")) or {}
        label = f"{method_label(ev, 'winkler_table3')} [{ev.get('experiment')}]"
        if primary.get("curve"):
            curves[label] = primary["curve"]
        if (primary.get("samples_pr") or {}).get("precision"):
            samples[label] = primary["samples_pr"]
    for sc in scores:
        if sc.get("task") == "vessel" and sc.get("method") == "second_observer":
            points["Human (2nd observer)"] = (sc["recall"], sc["precision"])
            if sc.get("per_image"):
                samples["Human (2nd observer)"] = sc["per_image"]
    paths = [figures.pr_curves(curves, folder / "winkler_fig5_pr_curves.png", points=points,
                               title="DRIVE: PR curves of the soft maps (Winkler et al. 2019, Fig. 5 left)"),
             figures.pr_scatter(samples, folder / "winkler_fig5_pr_samples.png",
                                title="DRIVE: samples in PR space (Winkler et al. 2019, Fig. 5 right)")]
    for paper, name, title in (("winkler2019", "winkler_likelihood_curves.png", "Winkler et al. 2019: training NLL"),
                               ("lu2020", "cglow_fig6_likelihood_curves.png", "c-Glow: training NLL (Fig. 6)")):
        runs = {str(ev.get("experiment")): ev["mlflow_run_id"] for ev in evals
                if ev.get("paper") == paper and ev.get("mlflow_run_id")}
        paths.append(figures.likelihood_curves(metric_histories(runs), folder / name, title=title))
    return paths


def build_all(metrics_dir: str | Path, out_dir: str | Path, figures_dir: str | Path | None,
              profile: str | None = None, check_runs: bool = True, info_dir: str | Path | None = None,
              expected: Mapping[str, Iterable[str]] | None = None) -> dict:
    """Build every table (and figure) from ``metrics_dir`` and ``info_dir`` (default: ``info`` beside
    ``metrics_dir``); returns ``{table: DataFrame}``.

    ``expected`` (``expected_results(params)``) names the results whose rows the tables must have: one without
    its metrics or info file is a ``FileNotFoundError`` naming it. Without it, whatever results there are are
    used. ``check_runs``: every computed row must cite an MLflow run id that the tracking store has, else a
    ``ValueError`` naming the rows (``--no-check-runs`` in `cnf tables` skips that).
    """
    metrics_dir = Path(metrics_dir)
    info_dir = Path(info_dir) if info_dir is not None else metrics_dir.parent / "info"
    expected = expected or {}
    missing = [path for kind, names in expected.items() for path in missing_files(metrics_dir, info_dir, kind, names)]
    if missing:
        raise FileNotFoundError(f"cnf tables: params.yaml asks for computed rows whose results are missing: "
                                f"{', '.join(missing)} (run `dvc repro`, or `cnf evaluate` / `cnf score` for them)")
    evals, scores = (load_results(metrics_dir, info_dir, kind, expected.get(kind)) for kind in ("eval", "score"))
    profile = profile or next((e.get("profile") for e in evals if e.get("profile")), None) or "unknown"
    for sc in scores:
        sc.setdefault("profile", profile)
    for ev in evals:
        table_names(_tables_of(ev), str(ev.get("_file", "an eval result")))
    frames = {name: build_table(name, evals, scores) for name in TABLE_NAMES}
    if check_runs:
        unnamed = sorted({str(r["experiment"]) for df in frames.values()
                          for _, r in df[df["source"].astype(str).str.startswith("computed")].iterrows()
                          if not isinstance(r["mlflow_run_id"], str) or not r["mlflow_run_id"]})
        if unnamed:
            raise ValueError(f"cnf tables: computed rows of {unnamed} cite no MLflow run id (their info files have "
                             "no mlflow_run_id: evaluate with --train-info, score with --track)")
        unknown = check_run_ids(frames)
        if unknown:
            raise ValueError(f"cnf tables: computed rows cite MLflow runs the tracking store does not have: "
                             f"{', '.join(unknown)} (tracking store: see MLFLOW_TRACKING_URI / mlflow.db)")
    for name, df in frames.items():
        write_table(name, df, out_dir)
        n = int(df["source"].astype(str).str.startswith("computed").sum())
        print(f"tables: {name}: {len(df) - n} reported + {n} computed rows", file=sys.stderr)
    write_readme(frames, out_dir, profile, [])
    if figures_dir is not None:
        for path in build_figures(evals, scores, figures_dir):
            print(f"tables: figure {path}", file=sys.stderr)
    return frames
