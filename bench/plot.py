"""One PNG of the benchmark results in bench/results/ (each panel drawn only if its results file exists).

python bench/plot.py [--results DIR] [--out FILE]
"""

# ruff: noqa: PLC0415 - matplotlib is imported once the backend is chosen

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results"
OURS, BASELINE, OTHER = "#1f77b4", "#d62728", "#7f7f7f"


def load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def throughput(ax: Any, data: dict[str, Any]) -> None:
    rows = [r for r in data["rows"] if r.get("baseline")]
    labels = [f"10 x {r['targets']}" + ("" if r.get("ledger") == "memory" else "\nmoto DynamoDB") for r in rows]
    x = range(len(rows))
    ours = [r["ours"]["p50_ms"] for r in rows]
    naive = [r["baseline"]["p50_ms"] for r in rows]
    ax.bar([i - 0.2 for i in x], naive, 0.4, color=BASELINE, label="naive: requests.post, one after another")
    ax.bar([i + 0.2 for i in x], ours, 0.4, color=OURS, label="forwarder (real handler)")
    for i, row in enumerate(rows):
        ax.annotate(f"{row.get('ratio', naive[i] / ours[i]):.0f}x", (i + 0.2, ours[i]), ha="center", va="bottom")
    if data.get("round_trip"):
        rtt = data["round_trip"].get("p50_ms")
        if rtt:
            ax.axhline(rtt, color=OTHER, linestyle="--", linewidth=1, label=f"one round trip ({rtt:.0f} ms)")
    ax.set_yscale("log")
    ax.set_xticks(list(x), labels)
    ax.set_xlabel("records x targets per batch (downstream answers after 50 ms)")
    ax.set_ylabel("batch wall time, p50 (ms, log)")
    ax.set_title("Forwarder throughput")
    ax.legend(fontsize=7)


def cold_start(ax: Any, data: dict[str, Any]) -> None:
    handlers = data["handlers"]
    kinds = [k for k in ("ours", "straightforward") if k in handlers]
    x = range(len(kinds))
    imports = [handlers[k]["import"]["p50_ms"] for k in kinds]
    first = [handlers[k]["import_and_first_record"]["p50_ms"] for k in kinds]
    ax.bar([i - 0.2 for i in x], imports, 0.4, color=[OURS if k == "ours" else BASELINE for k in kinds])
    ax.bar([i + 0.2 for i in x], first, 0.4, color=OTHER, label="import + first record (moto)")
    for i in x:
        ax.annotate(f"{imports[i]:.0f}", (i - 0.2, imports[i]), ha="center", va="bottom", fontsize=8)
        ax.annotate(f"{first[i]:.0f}", (i + 0.2, first[i]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), ["forwarder", "Powertools handler\nwith Tracer, eager clients"][: len(kinds)])
    ax.set_ylabel("ms, p50 (left bar: import)")
    ax.set_title("Cold start in a fresh interpreter")
    ax.legend(fontsize=7)


def listener_cost(ax: Any, data: dict[str, Any]) -> None:
    rows: list[tuple[str, float, float, str]] = []
    af3, af2, naive = data.get("airflow3", {}), data.get("airflow2", {}), data.get("naive", {})
    for label, block, color in (
        ("AF3 hook, SQS 10 ms", af3.get("ok", {}).get("hook"), OURS),
        ("AF3 hook, SQS down", af3.get("refused", {}).get("hook"), OURS),
        ("AF2 hook, SQS 10 ms", (af2.get("ok") or {}).get("hook"), OURS),
        ("naive, downstream 200 ms", naive.get("ok_200ms"), BASELINE),
    ):
        if block:
            rows.append((label, block["p50_ms"], block["p99_ms"], color))
    y = range(len(rows))
    ax.barh(list(y), [r[2] for r in rows], color="#c7c7c7", label="p99")
    ax.barh(list(y), [r[1] for r in rows], color=[r[3] for r in rows], label="p50")
    ax.set_yticks(list(y), [r[0] for r in rows], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("ms added per event (log)")
    ax.set_title("Listener cost per dataset event")
    ax.legend(fontsize=7)


def end_to_end(ax: Any, data: dict[str, Any]) -> None:
    forwarder = data.get("forwarder", data)
    summary = forwarder.get("summary", {})
    path = [(name, s) for name, s in summary.items() if s.get("role") == "path"]
    left = 0.0
    colors = ["#aec7e8", "#1f77b4", "#ffbb78", "#ff7f0e", "#98df8a", "#2ca02c"]
    for i, (name, stats) in enumerate(path):
        width = stats["p50_s"]
        ax.barh([0], [width], left=left, color=colors[i % len(colors)], label=name)
        left += width
    if "total" in summary:
        total = summary["total"]
        ax.axvline(total["p50_s"], color="black", linewidth=1)
        ax.axvline(total["p95_s"], color="black", linestyle=":", linewidth=1)
        ax.set_title(f"End to end, Airflow 3 -> Airflow 3: p50 {total['p50_s']:.2f} s, p95 {total['p95_s']:.2f} s")
    watcher = data.get("asset_watcher", {}).get("summary", {}).get("total")
    if watcher:
        ax.barh([1], [watcher["p50_s"]], color=OTHER, label="AssetWatcher on SQS (default poll), p50")
        ax.set_yticks([0, 1], ["forwarder", "AssetWatcher"])
    else:
        ax.set_yticks([0], ["forwarder"])
    ax.set_xlabel("seconds from producer task success to downstream DAG run (segment p50s)")
    ax.legend(fontsize=6, loc="lower right")


def scale(ax: Any, data: dict[str, Any]) -> None:
    checkpoints = data["checkpoints"]
    sent = [c["sent"] for c in checkpoints]
    pids = sorted({pid for c in checkpoints for pid in c["environments"]})
    for pid in pids:
        rss = [c["environments"].get(pid, {}).get("rss_kib", float("nan")) / 1024 for c in checkpoints]
        ax.plot(sent, rss, marker=".", color=OURS, alpha=0.7)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("events sent")
    ax.set_ylabel("RSS per execution environment (MiB)")
    ax.set_title(
        f"Scale: {data['settings']['events']:,} events, {data['deliveries_per_s']:.0f} deliveries/s, "
        f"{data['ssm_calls_total']} SSM calls"
    )


PANELS = [
    ("forwarder_throughput", throughput),
    ("cold_start", cold_start),
    ("listener_cost", listener_cost),
    ("e2e_latency_runs", end_to_end),
    ("scale", scale),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=RESULTS / "benchmarks.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [(name, draw, data) for name, draw in PANELS if (data := load(args.results, name)) is not None]
    if not present:
        raise SystemExit(f"no results in {args.results}")
    fig, axes = plt.subplots(len(present), 1, figsize=(9, 3.6 * len(present)))
    for ax, (name, draw, data) in zip([axes] if len(present) == 1 else axes, present, strict=True):
        try:
            draw(ax, data)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # an older results file
            ax.set_title(f"{name}: cannot draw ({type(exc).__name__}: {exc})")
            print(f"cannot draw {name}: {type(exc).__name__}: {exc}")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"{len(present)} panel(s) -> {args.out}")


if __name__ == "__main__":
    main()
