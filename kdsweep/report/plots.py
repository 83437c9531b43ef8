"""The report's two figures, drawn on Agg canvases without touching pyplot's global state or the backend choice.

acc_vs_lr: mean ± std over seeds of the selected accuracy per cell, one line per (variant, loss), log x.
curves:    test accuracy per epoch at each row's best lr, mean with a ± std band; one column per loss, the lower row
           zooms on the last quarter of training where the rows separate.
"""

from __future__ import annotations

import io
import math

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from kdsweep.report.aggregate import counted
from kdsweep.report.settings import Settings
from kdsweep.report.tables import fmt_lr

DPI = 100  # figures are sized in inches for reading at 100% at this dpi
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v")
SELECT_LABEL = {"best": "best epoch", "last": "last epoch"}


def _styles(head: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """A colour per variant and a line style and marker per loss, stable across both figures."""
    variants = list(dict.fromkeys(head["variant"]))
    losses = list(dict.fromkeys(head["loss"]))
    colours = [f"C{i}" for i in range(10)]
    return {
        (v, l): {
            "color": colours[variants.index(v) % 10],
            "linestyle": LINESTYLES[losses.index(l) % len(LINESTYLES)],
            "marker": MARKERS[losses.index(l) % len(MARKERS)],
        }
        for v, l in zip(head["variant"], head["loss"])
    }


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _baseline_line(ax, settings: Settings) -> None:
    if settings.baseline_accuracy is not None:
        ax.axhline(
            settings.baseline_accuracy, color="0.2", linestyle=(0, (6, 3)), linewidth=1.2, zorder=1,
            label=f"{settings.baseline_label}: {settings.baseline_accuracy:.2f}",
        )  # fmt: skip


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize=12)


def _zoom_limits(values: pd.DataFrame, settings: Settings, span: float = 10.0) -> tuple[float, float]:
    """A y range covering the top `span` points of the means (and the baseline when it is near)."""
    top = float((values["mean"] + values["std"].fillna(0.0)).max())
    near = values[values["mean"] >= top - span]
    lo = float((near["mean"] - near["std"].fillna(0.0)).min())
    base = settings.baseline_accuracy
    if base is not None and lo - span / 2 <= base <= top + span / 2:
        lo, top = min(lo, base), max(top, base)
    pad = max(0.3, 0.05 * (top - lo))
    return lo - pad, top + pad


def acc_vs_lr_figure(cells: pd.DataFrame, head: pd.DataFrame, settings: Settings, select: str = "best") -> Figure:
    """Upper panel: every cell. Lower panel: the same lines zoomed on the top ten points, where the rows compete."""
    fig = _new_figure(12, 9.5)
    full, zoom = fig.subplots(2, 1, height_ratios=[1, 1.1])
    drawn = cells[cells["n"] > 0]
    full.set_title("Test accuracy vs learning rate (mean ± std over seeds)", fontsize=13)
    zoom.set_title("Zoom on the top 10 points", fontsize=12)
    if drawn.empty or head.empty:
        for ax in (full, zoom):
            _empty(ax, "no completed runs yet")
    else:
        styles = _styles(head)
        groups = list(zip(head["variant"], head["loss"]))
        for ax in (full, zoom):
            for i, (variant, loss) in enumerate(groups):
                group = drawn[(drawn["variant"] == variant) & (drawn["loss"] == loss)].sort_values("lr")
                if group.empty:
                    continue
                dodge = 10 ** ((i - (len(groups) - 1) / 2) * 0.012)  # spread overlapping error bars, ~3% per line
                row = head[(head["variant"] == variant) & (head["loss"] == loss)].iloc[0]
                ax.errorbar(
                    group["lr"] * dodge, group[f"{select}_mean"], yerr=group[f"{select}_std"].fillna(0.0),
                    capsize=3, linewidth=1.6, markersize=5, label=f"{row['title']} · {row['loss_display']}",
                    **styles[(variant, loss)],
                )  # fmt: skip
            _baseline_line(ax, settings)
        lrs = sorted(set(drawn["lr"].dropna()))
        for ax in (full, zoom):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(lrs))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticklabels([fmt_lr(x) for x in lrs])
            ax.set_xlim(min(lrs) / 1.35, max(lrs) * 1.35)
        means = drawn.rename(columns={f"{select}_mean": "mean", f"{select}_std": "std"})
        zoom.set_ylim(*_zoom_limits(means, settings))
        full.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False, fontsize=10)
    for ax in (full, zoom):
        ax.set_xlabel("Learning rate (log scale)", fontsize=11)
        ax.set_ylabel(f"Test accuracy (%), {SELECT_LABEL[select]}", fontsize=11)
        ax.grid(True, which="major", alpha=0.3)
    return fig


def _curve(epochs: pd.DataFrame, students: list[str]) -> pd.DataFrame:
    """Per epoch: mean and sample std of test accuracy over the given students."""
    mine = epochs[epochs["student_id"].astype(str).isin(students)]
    if mine.empty:
        return pd.DataFrame(columns=["epoch", "mean", "std"])
    g = mine.groupby("epoch")["test_acc"]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1)}).reset_index()


def curves_figure(
    epochs: pd.DataFrame, trials: pd.DataFrame, head: pd.DataFrame, settings: Settings, select: str = "best"
) -> Figure:
    losses = list(dict.fromkeys(head["loss"])) if not head.empty else []
    ncols = max(1, len(losses))
    fig = _new_figure(max(10.0, 6.5 * ncols + 1.0), 9.5)
    axes = fig.subplots(2, ncols, squeeze=False)
    use = counted(trials, select)
    styles = _styles(head) if not head.empty else {}
    have_epochs = {"student_id", "epoch", "test_acc"} <= set(epochs.columns) and not epochs.empty
    for col in range(ncols):
        top, zoom = axes[0][col], axes[1][col]
        loss = losses[col] if losses else None
        rows = head[head["loss"] == loss] if loss is not None else head.iloc[0:0]
        last_epoch, window = 0, []
        for _, row in rows.iterrows():
            if row["cell_id"] is None or not have_epochs:
                continue
            students = trials.loc[use & (trials["cell_id"] == row["cell_id"]), "student_id"].astype(str).tolist()
            curve = _curve(epochs, students)
            if curve.empty:
                continue
            style = styles[(row["variant"], row["loss"])]
            label = f"{row['title']} (lr {fmt_lr(row['lr'])}, n={int(row['n'])})"
            band = curve["std"].fillna(0.0)
            for ax in (top, zoom):
                if len(curve) <= 20:  # short (smoke) runs: markers and error bars, so single epochs stay visible
                    ax.errorbar(curve["epoch"], curve["mean"], yerr=band, color=style["color"], capsize=3,
                                linestyle=style["linestyle"], marker=style["marker"], markersize=5, label=label)
                    continue
                ax.plot(curve["epoch"], curve["mean"], color=style["color"], linestyle=style["linestyle"],
                        linewidth=1.5, label=label)
                ax.fill_between(curve["epoch"], curve["mean"] - band, curve["mean"] + band, color=style["color"],
                                alpha=0.18, linewidth=0)  # fmt: skip
            last_epoch = max(last_epoch, int(curve["epoch"].max()))
            window.append(curve)
        title = settings.display_loss(loss) if loss is not None else ""
        top.set_title(f"{title}: all epochs", fontsize=12)
        zoom.set_title(f"{title}: last quarter of training, top 10 points", fontsize=12)
        if not window:
            _empty(top, "no finished epochs yet")
            _empty(zoom, "no finished epochs yet")
        else:
            start = math.floor(0.75 * last_epoch)
            tail = pd.concat([c[c["epoch"] >= start] for c in window])
            lo, hi = _zoom_limits(tail, settings)
            for ax in (top, zoom):
                _baseline_line(ax, settings)
            zoom.set_ylim(lo, hi)
            edge = 0.5 if last_epoch <= 20 else 0.0  # keep the markers of short runs off the frame
            top.set_xlim(1 - edge, last_epoch + edge)
            zoom.set_xlim(max(1, start) - edge, last_epoch + edge)
            zoom.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False, fontsize=10, ncol=1)
        for ax in (top, zoom):
            ax.xaxis.set_major_locator(FixedLocator([1]) if last_epoch == 1 else MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
            ax.set_ylabel("Test accuracy (%)", fontsize=11)
            ax.set_xlabel("Epoch", fontsize=11)
    fig.suptitle("Test accuracy over epochs at each row's best learning rate (mean ± std over seeds)", fontsize=13)
    return fig


def figures(
    cells: pd.DataFrame, head: pd.DataFrame, epochs: pd.DataFrame, trials: pd.DataFrame, settings: Settings,
    select: str = "best",
) -> dict[str, Figure]:  # fmt: skip
    """Both figures, keyed by their file stem under plots/."""
    return {
        "acc_vs_lr": acc_vs_lr_figure(cells, head, settings, select),
        "curves": curves_figure(epochs, trials, head, settings, select),
    }


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()

