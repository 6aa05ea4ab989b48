"""The benchmark's results as Markdown (docs/EVALUATION.md) and as each model card's test_metrics."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from app.inference.card import read_card, write_card
from app.modality import profile
from training.benchmark import ESTIMATED, TRUE

FAMILY_TITLES = {"physics": "physics noise", "gaussian": "white Gaussian noise"}


def _row(method: str, m: dict[str, Any], windowed: bool) -> str:
    window = f" {m['psnr_window']:.2f} |" if windowed else ""
    return (f"| {method} | {m['psnr']:.2f} | {m['ssim']:.4f} |{window} {m['residual_ratio']:.3f} | "
            f"{m['seconds_per_megapixel']:.3f} |")


def _estimator_note(row: dict[str, Any]) -> str:
    ratios = row.get("estimated_over_true_level")
    if not ratios:
        return ""
    note = (f" Estimated / true noise level: mean {ratios['mean']:.3f} "
            f"(range {ratios['min']:.3f}-{ratios['max']:.3f}).")
    own = row.get("clean_estimate_over_true_level")
    if own:
        # The test images are real scans with noise of their own, which the estimator sees too.
        note += (f" On the clean images alone the estimator reads {own['mean']:.3f} of the added level "
                 f"(range {own['min']:.3f}-{own['max']:.3f}): their own noise.")
    return note


def _verdict_lines(check: dict[str, Any]) -> list[str]:
    lines = [f"At the default level {check['model']} scores {check['model_psnr']:.2f} dB / SSIM "
             f"{check['model_ssim']:.4f}; the best classical method, {check['best_classical']}, "
             f"{check['best_classical_psnr']:.2f} dB / {check['best_classical_ssim']:.4f}: margin "
             f"{check['psnr_margin_db']:+.2f} dB (target +1.0 dB: {'met' if check['psnr_target_met'] else 'NOT met'}; "
             f"SSIM target {'met' if check['ssim_target_met'] else 'NOT met'}).",
             f"With the estimated level it is {check['estimated_vs_true_level_db']:+.2f} dB from itself given the true "
             f"level (target within 0.2 dB: {'met' if check['estimated_within_0_2_db'] else 'NOT met'}); residual "
             f"ratio {check['residual_ratio']:.3f} (target 0.9-1.1: "
             f"{'met' if check['residual_ratio_target_met'] else 'NOT met'})"
             + (f"; {check['speedup_over_bm3d']}x faster than BM3D per megapixel." if "speedup_over_bm3d" in check
                else ".")]
    shortfalls = check["rows_below_bm3d_or_input"]
    lines.append("Rows more than 0.2 dB below BM3D (true sigma) or below the noisy input: "
                 + ("; ".join(shortfalls) if shortfalls else "none") + ".")
    return lines


def write_markdown(results: list[dict[str, Any]], path: Path, command: str) -> None:
    lines = ["# Evaluation on unseen sources", "",
             f"Made by `{command}` on {datetime.now(timezone.utc).date()} (2-core CPU, ONNX Runtime for the models).",
             "",
             "Every test image comes from a package that no model of its modality saw in training or validation",
             "(leave one source out; `training/data/sources.py`). PSNR and SSIM use the clean image's own data range",
             "(max - min); for CT, `PSNR win` is PSNR in the soft-tissue window -160..240 HU. The residual ratio is",
             "std(noisy - output) / std(noisy - clean): 1 is ideal, above 1 structure was removed, below 1 noise left.",
             "Seconds per megapixel on this machine, one image at a time (models warm: one untimed call on each image",
             "first, as in a serving process). Classical parameters are tuned on the",
             "validation split; BM3D and the wavelet method get the true noise SD, `bm3d (true NPS)` the true noise",
             f"power spectrum. A conditioned model runs with the level the service estimates (`{ESTIMATED}`) and",
             f"with the true one (`{TRUE}`).", ""]
    for result in results:
        known = profile(result["modality"])
        windowed = known.evaluation_window is not None
        lines += [f"## {known.title}", "",
                  f"Unseen test volumes: {', '.join(result['test_volumes'])} (crops of at most {result['crop']} px). "
                  f"Physics noise level: {result['noise_parameter']}; default {result['default_level']}. "
                  f"White Gaussian level: {result['gaussian_units']}.", ""]
        for family, rows in result["families"].items():
            for name, row in rows.items():
                lines += [f"### {FAMILY_TITLES[family]}, {name} ({row['level']}), {row['images']} images", ""]
                note = _estimator_note(row)
                if note:
                    lines += [note.strip(), ""]
                header = "| method | PSNR dB | SSIM |" + (" PSNR win |" if windowed else "") + " residual ratio | s / MP |"
                lines += [header, "|---" * (6 if windowed else 5) + "|"]
                for method, m in sorted(row["methods"].items(), key=lambda kv: -kv[1]["psnr"]):
                    lines.append(_row(method, m, windowed))
                lines.append("")
        lines += _verdict_lines(result["verdict"]) + [""]
    path.write_text("\n".join(lines) + "\n")


def card_levels(levels: dict[str, Any], method: str) -> dict[str, Any]:
    """One method's rows of an evaluation, as a card's ``test_metrics`` levels."""
    return {name: {"level": lvl["level"], "images": lvl["images"], **lvl["methods"][method],
                   "noisy_input_psnr": lvl["methods"]["noisy input"]["psnr"]}
            for name, lvl in levels.items()}


def update_cards(result: dict[str, Any], command: str) -> None:
    for arch, directory in result["models"].items():
        card = read_card(Path(directory))
        method = f"{arch} ({ESTIMATED})" if card.noise_map is not None else arch
        metrics = {"command": command, "split": "unseen sources (leave one package out)",
                   "test_volumes": result["test_volumes"],
                   "families": {family: card_levels(rows, method) for family, rows in result["families"].items()}}
        if arch == result["default_model"]:
            metrics["comparison_at_default_level"] = result["verdict"]
        write_card(Path(directory), card.model_copy(update={"test_metrics": metrics}))


def _cell(method: dict[str, Any] | None) -> str:
    return "-" if method is None else f"{method['psnr']:.2f} dB / {method['ssim']:.4f}"


def readme_tables(results: list[dict[str, Any]]) -> str:
    """The README's two summary tables (default level per modality; every row), from the results."""
    head = ["| modality, unseen test images (default level) | noisy input | best classical | autoencoder | "
            "U-Net, estimated level | U-Net, true level | margin | residual ratio | U-Net vs BM3D speed |",
            "|---|---|---|---|---|---|---|---|---|"]
    rows = ["| modality | family, level | noisy | BM3D (true sigma) | best other | U-Net, estimated level | "
            "estimated / true level |", "|---|---|---|---|---|---|---|"]
    for result in results:
        title = profile(result["modality"]).title
        check = result["verdict"]
        methods = next(v for v in result["families"]["physics"].values()
                       if v["level"] == result["default_level"])["methods"]
        head.append(
            f"| {title}: {', '.join(result['test_volumes'])} ({result['default_level']:g}) | "
            f"{_cell(methods['noisy input'])} | {check['best_classical']}: "
            f"{check['best_classical_psnr']:.2f} dB / {check['best_classical_ssim']:.4f} | "
            f"{_cell(methods.get('autoencoder'))} | {_cell(methods.get(f'unet ({ESTIMATED})'))} | "
            f"{_cell(methods.get(f'unet ({TRUE})'))} | {check['psnr_margin_db']:+.2f} dB | "
            f"{check['residual_ratio']:.2f} | {check.get('speedup_over_bm3d', '-')}x |")
        for family, levels in result["families"].items():
            for name, row in levels.items():
                m = row["methods"]
                others = {k: v for k, v in m.items()
                          if k not in ("noisy input", "bm3d") and not k.startswith(("unet", "autoencoder"))}
                best = max(others, key=lambda k: others[k]["psnr"])
                ratio = (row.get("estimated_over_true_level") or {}).get("mean", "-")
                rows.append(f"| {title} | {family} {name} ({row['level']:g}) | {m['noisy input']['psnr']:.2f} | "
                            f"{m['bm3d']['psnr']:.2f} | {best} {others[best]['psnr']:.2f} | "
                            f"{m[f'unet ({ESTIMATED})']['psnr']:.2f} | {ratio} |")
    return "\n".join(head) + "\n\nEvery row, both noise families (PSNR dB; the U-Net with the estimated level; " \
        "estimated / true noise level as the service's estimator measured it on these images):\n\n" + "\n".join(rows)


if __name__ == "__main__":  # python -m training.report: the README's tables from docs/evaluation.json
    import json
    import sys

    print(readme_tables(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/evaluation.json").read_text())))
