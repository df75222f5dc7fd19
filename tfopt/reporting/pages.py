"""report.html (one run) and summary.html (a batch): self-contained pages built from the
report JSON, readable offline on a laptop or a phone.

Charts are matplotlib SVG inlined in a Jinja2 template: no script, no network, tens of KB
per chart, where Vega-Lite or Plotly would inline 1-3.5 MB of JavaScript to work offline.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from tfopt.modes import BY_PRECISION
from tfopt.results import human_size

TEMPLATES = Path(__file__).parent / "templates"
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.filters["size"] = human_size
    env.filters["sci"] = lambda v: "-" if v is None else (f"{v:.2e}" if isinstance(v, float)
                                                          else str(v))
    env.filters["shape"] = lambda s: "?" if s is None else \
        "[" + ",".join("?" if d is None else str(d) for d in s) + "]"
    return env


def _svg(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # inline: no XML prolog or doctype


def _figure(height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "svg.fonttype": "none", "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt.subplots(figsize=(7.5, height))


def op_chart(report: dict, top: int = 14) -> str:
    """Op counts of the source, the frozen graph and each artifact, for the commonest ops."""
    series = [("source", report["source"]["ops"]), ("frozen", report["frozen"]["ops"])]
    series += [(a["format"], a["ops"]) for a in report["artifacts"] if a.get("ops")]
    totals = dict(series[0][1])
    # the ops the deployed graphs run, commonest first; the source's count beside them
    kept: dict[str, int] = {}
    for _, ops in series[1:]:
        for op, count in ops.items():
            kept[op] = kept.get(op, 0) + count
    names = sorted(kept or totals, key=lambda op: (-(kept or totals)[op], op))[:top][::-1]
    figure, axes = _figure(0.28 * len(names) + 1.2)
    height = 0.8 / len(series)
    for i, (label, ops) in enumerate(series):
        axes.barh([y + i * height for y in range(len(names))], [ops.get(n, 0) for n in names],
                  height, label=label, color=PALETTE[i % len(PALETTE)])
    axes.set_yticks([y + 0.4 - height / 2 for y in range(len(names))], names)
    axes.set_xscale("symlog", linthresh=1)  # training graphs hold hundreds of ops the others lack
    axes.set_xlabel("nodes (log scale)")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(series), frameon=False)
    return _svg(figure)


def pass_chart(report: dict) -> str:
    """Node count after each pass, in pipeline order."""
    passes = report["passes"]
    labels = ["start"] + [p["name"] + (f" ({p['target']})" if p.get("target") else "")
                          for p in passes]
    counts = [passes[0]["nodes_before"] if passes else report["frozen"]["nodes"]]
    counts += [p["nodes_after"] for p in passes]
    figure, axes = _figure(2.6)
    axes.plot(range(len(counts)), counts, marker="o", color=PALETTE[0])
    axes.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    axes.set_ylabel("nodes")
    return _svg(figure)


def removed_chart(report: dict) -> str | None:
    removed = {k: v for k, v in report["removed"].items() if v}
    if not removed:
        return None
    names = sorted(removed, key=lambda k: removed[k])
    figure, axes = _figure(0.3 * len(names) + 0.8)
    axes.barh(names, [removed[n] for n in names], color=PALETTE[3])
    axes.set_xlabel("nodes removed")
    return _svg(figure)


def weights_at_precision(report: dict, artifact: dict) -> float:
    """The physical minimum of an artifact: the frozen fp32 weights at its precision."""
    return report["frozen"]["constant_bytes"] * \
        (BY_PRECISION[artifact["precision"]].bytes_per_param
         if artifact["precision"] in BY_PRECISION else 4.0) / 4.0


def size_chart(report: dict) -> str | None:
    """Artifact bytes against the physical minimum: the weights at the artifact's precision."""
    made = [a for a in report["artifacts"] if a.get("bytes")]
    if not made or not report["frozen"]["constant_bytes"]:
        return None
    figure, axes = _figure(0.45 * len(made) + 0.8)
    names = [f"{a['format']} ({a['precision']})" for a in made]
    minimum = [weights_at_precision(report, a) for a in made]
    axes.barh(names, [a["bytes"] / 1024 for a in made], color=PALETTE[0], label="artifact")
    axes.scatter([m / 1024 for m in minimum], names, color=PALETTE[3], marker="|", s=400,
                 label="weights at that precision", zorder=3)
    axes.set_xlabel("KB")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, frameon=False)
    return _svg(figure)


def resource_chart(report: dict) -> str | None:
    """Seconds and peak resident memory per stage of the run."""
    stages = report.get("resources", {}).get("stages", [])
    if not stages:
        return None
    import matplotlib.pyplot as plt

    _figure(0.1)  # the shared style
    plt.close("all")
    figure, (left, right) = plt.subplots(1, 2, figsize=(7.5, 0.32 * len(stages) + 0.9),
                                         sharey=True)
    names = [s["stage"] for s in stages][::-1]
    left.barh(names, [s["seconds"] for s in stages][::-1], color=PALETTE[2])
    left.set_xlabel("seconds")
    right.barh(names, [s["peak_rss_mb"] or 0 for s in stages][::-1], color=PALETTE[4])
    right.set_xlabel("peak RSS (MB)")
    return _svg(figure)


def divergence_chart(artifact: dict) -> str | None:
    """Each traced op's error over its tolerance along the original's order (log scale),
    the first divergence marked."""
    found = artifact.get("divergence") or {}
    points = found.get("chart") or []
    if not points:
        return None
    figure, axes = _figure(2.2)
    ratios = [max(ratio, 1e-4) for _, ratio in points]
    axes.plot(range(len(points)), ratios, color=PALETTE[0], marker=".", linewidth=1)
    axes.axhline(1.0, color=PALETTE[2], linestyle="--", linewidth=1, label="tolerance")
    axes.set_yscale("log")
    axes.set_xlabel(f"ops of the original, in order ({found.get('compared')} compared)")
    axes.set_ylabel("error / tolerance")
    first = [i for i, (op, _) in enumerate(points) if op == found.get("op")]
    if first:
        axes.scatter(first[:1], [ratios[first[0]]], color=PALETTE[3], s=60, zorder=3,
                     label=f"first divergence: {found['op'].rsplit('/', 2)[-2:][0]}")
    axes.legend(loc="upper left", frameon=False)
    return _svg(figure)


def verdict(artifact: dict) -> tuple[str, str]:
    """(ok | failed | parity, one sentence) for a target's banner."""
    if artifact["status"] == "skipped":
        return "skipped", artifact.get("error") or "the target cannot hold this model"
    if artifact["status"] == "failed":
        return "failed", artifact.get("error") or "the target failed to convert"
    parity = artifact.get("parity") or {}
    if artifact["status"] == "differs":
        return "parity", parity.get("reason") or "outputs differ from the original"
    fallback = f"; converted with the converter's {artifact['fallback']} fallback" \
        if artifact.get("fallback") else ""
    batch = artifact.get("batch") or {}
    sizes = " and ".join(str(b) for b in batch.get("verified", []))
    batches = f" at batch {sizes}" if sizes else ""
    if batch.get("limit"):
        batches += f"; takes batch 1 only ({batch['limit']})"
    return "ok", (f"{artifact['precision']}, matches the original{batches} (max abs error "
                  f"{parity.get('max_abs_err', 0):.2e}){fallback}")


def render_report(report: dict) -> str:
    charts = {"ops": op_chart(report), "passes": pass_chart(report),
              "removed": removed_chart(report), "sizes": size_chart(report),
              "resources": resource_chart(report)}
    return _environment().get_template("report.html.j2").render(
        report=report, charts=charts,
        verdicts={a["format"]: verdict(a) for a in report["artifacts"]},
        divergences={a["format"]: divergence_chart(a) for a in report["artifacts"]},
        minimums={a["format"]: weights_at_precision(report, a) for a in report["artifacts"]})


def write_report(out: Path, report: dict | None = None) -> Path:
    """OUT/report.html from report (or OUT/report.json)."""
    report = report if report is not None else json.loads((out / "report.json").read_text())
    page = out / "report.html"
    page.write_text(render_report(report))
    return page


def write_summary_page(out: Path, summary: dict | None = None) -> Path:
    """OUT/summary.html for a batch, each row linking to its model's report.html."""
    summary = summary if summary is not None else \
        json.loads((out / "summary.json").read_text())
    pages = {row["model"]: (out / row["model"] / "report.html").is_file()
             for row in summary["rows"]}
    page = out / "summary.html"
    page.write_text(_environment().get_template("summary.html.j2").render(
        summary=summary, pages=pages))
    return page
