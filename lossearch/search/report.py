"""What ``lossearch search`` and ``resume`` print at the end: per-family ranking, best config."""

from __future__ import annotations

from pathlib import Path

from lossearch.search.driver import is_uri, read_search_file


def best_config_path(exp: str) -> Path:
    """``<exp>/best.yaml`` for a local experiment, ``./best-<name>.yaml`` for a URI."""
    if is_uri(exp):
        name = exp.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]  # no ?endpoint_override=...
        return Path(f"best-{name}.yaml").resolve()
    return Path(exp) / "best.yaml"


def finish_search(exp: str) -> Path:
    """Print the per-loss-family ranking table and export the best config; return its path."""
    from rich.console import Console
    from rich.table import Table

    from analysis import load_trials, rank_losses
    from lossearch.search.export import export_best

    meta = read_search_file(exp)
    metric, mode = meta.get("metric", "exact_match"), meta.get("mode", "max")
    console = Console()
    df = load_trials([exp])
    ranks = rank_losses(df, metric=metric, by=(), mode=mode)
    table = Table(title=f"loss families by {metric} ({mode})")
    for col in ("rank", "loss", "best", "mean", "std", "n", "improvement_vs_ce_pct"):
        table.add_column(col, justify="left" if col == "loss" else "right")
    for _, row in ranks.iterrows():
        table.add_row(
            str(int(row["rank"])),
            str(row["loss"]),
            *(f"{row[c]:.4f}" if row[c] == row[c] else "-" for c in ("best", "mean", "std")),
            str(int(row["n"])),
            f"{row['improvement_vs_ce_pct']:+.1f}%" if row["improvement_vs_ce_pct"] == row[
                "improvement_vs_ce_pct"] else "-",
        )
    console.print(table)
    counts = df.drop_duplicates("trial_id")["status"].value_counts().to_dict()
    console.print("trials: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    path = export_best(exp, out=best_config_path(exp))[0]
    # soft_wrap: a long path stays on one line, so the command can be copied as it is
    console.print(f"best config: {path}", soft_wrap=True)
    console.print(f"re-run it:   lossearch train --config {path}", soft_wrap=True)
    return path
