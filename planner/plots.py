"""Gantt charts of a replay: predicted and measured bars one above the other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"load": "#4c72b0", "unload": "#8c8c8c", "run": "#55a868", "kv_save": "#c44e52",
          "kv_restore": "#dd8452"}


def gantt(report: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    actions = report["actions"]
    lanes = sorted({(a["device"], "compute" if a["kind"] == "run" else "transfer")
                    for a in actions})
    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.9 * len(lanes)))
    ticks, labels = [], []
    for i, (dev, lane) in enumerate(lanes):
        y = i * 3
        for a in actions:
            if (a["device"], "compute" if a["kind"] == "run" else "transfer") != (dev, lane):
                continue
            c = COLORS[a["kind"]]
            ax.broken_barh([(a["start_s"], max(a["end_s"] - a["start_s"], 1e-3))], (y + 1.1, 0.8),
                           facecolors=c, alpha=0.45, edgecolor="none")
            if a.get("measured_start_s") is not None and a.get("measured_end_s") is not None:
                ax.broken_barh([(a["measured_start_s"],
                                 max(a["measured_end_s"] - a["measured_start_s"], 1e-3))],
                               (y + 0.1, 0.8), facecolors=c,
                               edgecolor="black" if a.get("status") == "failed" else "none")
        ticks += [y + 0.5, y + 1.5]
        labels += [f"{dev} {lane} measured", f"{dev} {lane} predicted"]
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("seconds since replay start")
    ax.set_title(f"{report['instance']['name']}: predicted (pale) and measured (solid)")
    ax.legend(handles=[Patch(color=c, label=k) for k, c in COLORS.items()], loc="upper right",
              fontsize=8, ncol=5)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
