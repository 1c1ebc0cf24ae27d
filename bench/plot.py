"""A benchmark's JSON as a PNG: effective GB/s against the number of parameters for every peer,
one panel per optimizer, the device's copy bandwidth as a dashed line, and the many-tensor layout's
rows (GPT-2's 148 tensors) as bars in a last panel.

Reads what ``bench/run.py`` (the CPU suite) and ``bench/gpu.py`` (the GPU suite) write; both call
:func:`plot` after a run (``gpu.py`` where the device host has matplotlib). For a GPU session's
results, unpacked here::

    python bench/plot.py bench/results/2026-11-26-nvidia-h200-gpu-pass17.json   # writes ...-pass17.png

``--peers`` keeps some peers only (comma-separated, in legend order).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

PALETTE = [f"C{i}" for i in range(10)] + ["black", "olive", "teal", "navy", "maroon", "goldenrod", "orchid", "slategray"]


def floor_gbs(info: dict) -> float | None:
    """The copy bandwidth the run measured: CPU ``floor_gbs``, GPU ``copy_gbs``."""
    cb = info.get("copy_bandwidth") or {}
    return cb.get("floor_gbs") or cb.get("copy_gbs")


def device_name(info: dict) -> str:
    if info.get("gpu"):
        return str(info["gpu"])
    m = info.get("machine") or {}
    return f"{m.get('cpu', 'CPU')} ({m.get('cores', '?')} cores)"


def _many(r: dict) -> bool:
    return "gpt2" in r.get("layout", "")


def plot(data: dict, path: pathlib.Path, peers: list[str] | tuple[str, ...] | None = None,
         colors: dict[str, str] | None = None) -> list[str]:
    """Writes ``data`` (a suite's JSON: ``info`` and ``results``) to ``path`` as a PNG; returns
    the panels' titles. ``peers``: which peers, in legend order (default: all, as they come);
    ``colors``: a color per peer (the rest from a palette)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in data["results"] if "step_s" in r and "gbs" in r]
    order = [p for p in (peers or dict.fromkeys(r["peer"] for r in results)) if any(r["peer"] == p for r in results)]
    if not order:
        raise ValueError(f"{path.name}: no timed rows to plot (peers {list(peers or [])})")
    results = [r for r in results if r["peer"] in order]
    colors = dict(colors or {})
    spare = iter(c for c in PALETTE if c not in colors.values())
    for p in order:
        colors.setdefault(p, next(spare, "gray"))
    flat = [r for r in results if not _many(r)]
    many = [r for r in results if _many(r)]
    opts = list(dict.fromkeys(r["optimizer"] for r in flat))
    floor = floor_gbs(data["info"])
    ncols = len(opts) + (1 if many else 0)
    fig, axes = plt.subplots(1, ncols, figsize=(3.4 * ncols, 3.8), squeeze=False)
    titles = []
    for ax, opt in zip(axes[0], opts, strict=False):
        for peer in order:
            pts = sorted((r["params"], r["gbs"]) for r in flat if r["optimizer"] == opt and r["peer"] == peer)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3.5, label=peer, color=colors[peer])
        if floor:
            ax.axhline(floor, ls="--", color="gray", lw=1, label="copy bandwidth")
        ax.set_xscale("log")
        ax.set_title(opt)
        ax.set_xlabel("parameters (flat)")
        ax.grid(alpha=0.3)
        titles.append(opt)
    axes[0][0].set_ylabel("effective GB/s (higher is better)")
    outside = len(order) > 8  # many peers (the GPU suite): one legend beside the panels
    if not outside:
        axes[0][0].legend(fontsize=7)
    if many:
        ax = axes[0][-1]
        groups = list(dict.fromkeys((r["optimizer"], r.get("form", "")) for r in many))
        present = [p for p in order if any(r["peer"] == p for r in many)]
        width = 0.8 / len(present)
        for i, peer in enumerate(present):
            ys = [next((r["gbs"] for r in many if (r["optimizer"], r.get("form", "")) == g and r["peer"] == peer), 0) for g in groups]
            ax.bar(np.arange(len(groups)) + i * width, ys, width, color=colors[peer], label=peer)
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2)
        ax.set_xticklabels([f"{o}\n{f}".strip() for o, f in groups], fontsize=6)
        if floor:
            ax.axhline(floor, ls="--", color="gray", lw=1)
        title = many[0]["layout"].split()[0] + " (148 tensors)"
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        if not outside and (not opts or len(present) != len(order)):
            ax.legend(fontsize=6)
        titles.append(title)
    info = data["info"]
    fig.suptitle(f"optimizer step, {device_name(info)}, {info.get('date', '')}", fontsize=9)
    fig.tight_layout()
    if outside:
        handles = [plt.Line2D([], [], color=colors[p], marker="o", ms=3.5, label=p) for p in order]
        if floor:
            handles.append(plt.Line2D([], [], color="gray", ls="--", label="copy bandwidth"))
        fig.legend(handles=handles, fontsize=6.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return titles


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=pathlib.Path, help="a suite's .json (bench/run.py, bench/gpu.py)")
    ap.add_argument("--peers", default=None, help="comma-separated peers to keep, in legend order")
    a = ap.parse_args(argv)
    peers = [p.strip() for p in a.peers.split(",")] if a.peers else None
    for path in a.results:
        out = path.with_suffix(".png")
        titles = plot(json.loads(path.read_text()), out, peers)
        print(f"wrote {out} ({', '.join(titles)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
