"""The comparison's plots as PNG files (for the README and docs), drawn with matplotlib when it
is installed (``pip install 'slfaas[bench]'``); without it, the HTML report has the same plots
and ``write_pngs`` says so instead of failing the run."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

MISSING = ("matplotlib is not installed, so no PNG plots were written (the HTML report has the same plots); "
           "pip install 'slfaas[bench]' or pip install matplotlib, then run again")


def write_pngs(data: Mapping[str, Any], out_dir: Path) -> tuple[dict[str, Path], str | None]:
    """(name → path of each PNG written, a note when none could be)."""
    try:
        import matplotlib
    except ImportError:
        return {}, MISSING
    matplotlib.use("Agg")   # files only, no display
    import matplotlib.pyplot as plt

    paths = {"ttft_cdf_png": out_dir / "ttft_cdf.png", "cost_png": out_dir / "cost.png",
             "timeline_png": out_dir / "timeline.png"}
    runs = data["runs"]

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, run in runs.items():
        values = sorted(run["ttft_ms"])
        if values:
            ax.step(values, [(k + 1) / len(values) for k in range(len(values))], where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (ms, from the scheduled arrival; log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("TTFT CDF per policy")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths["ttft_cdf_png"], dpi=130)
    plt.close(fig)

    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [float(r["user_usd"]) for r in rows], 0.4, label="what the user pays")
    ax.bar([x + 0.2 for x in xs], [float(r["provider_usd"]) for r in rows], 0.4, label="provider's node GPU-seconds")
    ax.set_xticks(list(xs), [r["policy"] for r in rows])
    ax.set_ylabel("USD")
    ax.set_title("Cost per policy, same slice")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths["cost_png"], dpi=130)
    plt.close(fig)

    fig, axes = plt.subplots(len(runs) or 1, 1, figsize=(8, 1.9 * max(1, len(runs))), sharex=True, squeeze=False)
    for ax, (name, run) in zip(axes[:, 0], runs.items()):
        since = run["window"]["since_ts"]
        samples = [s for s in run["samples"] if s["ts"] >= since - 1]
        ts = [s["ts"] - since for s in samples]
        ax.plot(ts, [s["instances"] for s in samples], label="instances alive")
        ax.set_ylabel(name, fontsize=8)
        used = [(s["ts"] - since, s["device_used_mb"] / 1024) for s in samples if s["device_used_mb"] is not None]
        if used:
            twin = ax.twinx()
            twin.plot([t for t, _ in used], [g for _, g in used], "--", color="tab:red", label="GPU memory used (GiB)")
            twin.set_ylabel("GiB", fontsize=8)
    fig.supxlabel("seconds from the window's start (solid: instances; dashed: GPU memory used)", fontsize=9)
    fig.suptitle("Instances and GPU memory over each run")
    fig.tight_layout()
    fig.savefig(paths["timeline_png"], dpi=130)
    plt.close(fig)
    return paths, None
