"""``dprune eval-reid FEATURES.npz``: ReID metrics of saved query and gallery features.

The command object is registered in the main ``dprune`` group by :mod:`dprune.cli`.
"""
from __future__ import annotations

import json

import click

from ..fileio import read_npz
from .reid import METRICS, evaluate_reid

ARRAYS = ("query", "gallery", "query_ids", "gallery_ids", "query_cams", "gallery_cams")

FEATURES_MAX_BYTES = 4 << 30
"""Largest array of a features file.  Features are the one array dprune reads whole that grows
with the test set times the feature size: MSMT17's 82,161 gallery images at 2,048-d float32
take 0.67 GB, more than :data:`dprune.fileio.ARRAY_MAX_BYTES`."""


@click.command("eval-reid")
@click.argument("features", metavar="FEATURES.npz",
                type=click.Path(dir_okay=False, path_type=str))
@click.option("--metric", type=click.Choice(METRICS), default="euclidean", show_default=True,
              help="Squared Euclidean distance, or 1 - cosine similarity.")
@click.option("--block-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Queries ranked at a time; memory grows with block size x gallery size.")
@click.option("--max-rank", type=click.IntRange(min=1), default=50, show_default=True,
              help="Length of the CMC curve in the JSON output.")
@click.option("--device", default="cpu", show_default=True,
              help="Torch device for the distances, e.g. cpu or cuda.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON line instead of a table.")
def eval_reid(features: str, metric: str, block_size: int, max_rank: int, device: str,
              as_json: bool) -> None:
    """Evaluate query/gallery features: mAP, CMC Rank-1/5/10, mINP.

    FEATURES.npz holds the arrays query [Q, D], gallery [G, D], query_ids [Q],
    gallery_ids [G], query_cams [Q] and gallery_cams [G].  Gallery images with the
    query's identity and camera are left out of its ranking; queries without any valid
    match are skipped and counted.
    """
    try:
        arrays = read_npz(features, "features file", max_bytes=FEATURES_MAX_BYTES)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    missing = [name for name in ARRAYS if name not in arrays]
    if missing:
        raise click.ClickException(
            f"{features} lacks array(s) {', '.join(missing)} (has: "
            f"{', '.join(sorted(arrays)) or 'none'})")
    try:
        result = evaluate_reid(arrays["query"], arrays["gallery"], arrays["query_ids"],
                               arrays["gallery_ids"], arrays["query_cams"],
                               arrays["gallery_cams"], metric=metric, block_size=block_size,
                               max_rank=max_rank, device=device)
    except (ValueError, RuntimeError) as e:
        # RuntimeError: torch's, for an unknown or unavailable device.
        raise click.ClickException(str(e).splitlines()[0]) from None
    if as_json:
        click.echo(json.dumps({"metric": metric, **result}))
        return
    rows = [(name, f"{100 * result[key]:6.2f}%") for name, key in (
        ("mAP", "mAP"), ("Rank-1", "rank1"), ("Rank-5", "rank5"), ("Rank-10", "rank10"),
        ("mINP", "mINP"), ("(mAP+R1)/2", "mAP_rank1_mean"))]
    rows.append(("queries", f"{result['num_valid_queries']} evaluated, "
                            f"{result['num_skipped_queries']} skipped (no valid match)"))
    width = max(len(name) for name, _ in rows)
    click.echo(f"ReID evaluation of {features} ({metric} distance)")
    for name, value in rows:
        click.echo(f"  {name:<{width}}  {value}")
