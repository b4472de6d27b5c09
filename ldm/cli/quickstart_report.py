"""The quick start's report: targets, ``report.json`` numbers that must repeat, and ``report.md``."""
from __future__ import annotations

import math
import sys

#: the quick start's quality targets (issue 11): name -> (threshold, "min" | "max")
TARGETS = {
    "autoencoder_psnr_db": (30.0, "min"),
    "class_oracle_accuracy_cfg": (0.97, "min"),
    "text_oracle_accuracy_cfg": (0.95, "min"),
    "unconditional_tv": (0.15, "max"),
}

STAGES = (("autoencoder", "autoencoder"), ("class LDM", "class_conditional"), ("text LDM", "text_conditional"))


def target_values(report: dict) -> dict[str, float]:
    return {
        "autoencoder_psnr_db": report["autoencoder"]["psnr_db"],
        "class_oracle_accuracy_cfg": report["class_conditional"]["oracle_accuracy_cfg"],
        "text_oracle_accuracy_cfg": report["text_conditional"]["oracle_accuracy_cfg"],
        "unconditional_tv": report["class_conditional"]["unconditional"]["total_variation"],
    }


def target_summary(report: dict) -> dict:
    """``{name: {value, target, met}}`` for :data:`TARGETS` and "guidance beats scale 1" of both models."""
    values = target_values(report)
    summary = {name: {"value": values[name], "target": threshold,
                      "met": bool(values[name] >= threshold if kind == "min" else values[name] <= threshold)}
               for name, (threshold, kind) in TARGETS.items()}
    for kind in ("class_conditional", "text_conditional"):
        part = report[kind]
        summary[f"{kind}_guidance_beats_scale1"] = {
            "value": part["oracle_accuracy_cfg"] - part["oracle_accuracy_scale1"], "target": 0.0,
            "met": bool(part["oracle_accuracy_cfg"] > part["oracle_accuracy_scale1"])}
    return summary


def reproducible_numbers(report: dict) -> dict[str, float]:
    """The numbers a rerun with the same seed must repeat: step counts, PSNR, every accuracy, the
    unconditional histogram and TV, the latent scale factors (not times, paths or the machine)."""
    numbers = {"autoencoder.steps": report["autoencoder"]["steps"],
               "autoencoder.psnr_db": report["autoencoder"]["psnr_db"]}
    for kind in ("class_conditional", "text_conditional"):
        part = report[kind]
        for key, value in part.items():
            if "accuracy" in key or key in ("train_steps", "scale_factor"):
                numbers[f"{kind}.{key}"] = value
    unconditional = report["class_conditional"]["unconditional"]
    numbers["unconditional.total_variation"] = unconditional["total_variation"]
    numbers["unconditional.undecidable_fraction"] = unconditional["undecidable_fraction"]
    for index, value in enumerate(unconditional["class_histogram"]):
        numbers[f"unconditional.class_histogram[{index}]"] = value
    return numbers


def _target_text(name: str) -> str:
    threshold, kind = TARGETS[name]
    shown = f"{threshold:g}" if name == "autoencoder_psnr_db" or name == "unconditional_tv" else f"{threshold:.0%}"
    return ("≥ " if kind == "min" else "≤ ") + shown


def markdown_report(report: dict) -> str:
    ae, cls, txt = report["autoencoder"], report["class_conditional"], report["text_conditional"]
    unc = cls["unconditional"]
    g = cls["guidance_scale"]
    rows = [
        ("Autoencoder PSNR (validation, dB)", f"{ae['psnr_db']:.2f}", _target_text("autoencoder_psnr_db")),
        (f"Class-conditional oracle accuracy, DDIM {cls['ddim_steps']} steps, CFG {g:g}",
         f"{cls['oracle_accuracy_cfg']:.1%}", _target_text("class_oracle_accuracy_cfg")),
        ("  same, guidance scale 1", f"{cls['oracle_accuracy_scale1']:.1%}", "< CFG"),
        (f"  DDIM {cls['fast_steps']} steps, CFG {g:g}", f"{cls['oracle_accuracy_ddim_fast_steps_cfg']:.1%}", ""),
        (f"  DPM-Solver++ {cls['fast_steps']} steps, CFG {g:g}",
         f"{cls['oracle_accuracy_dpm_solver_fast_steps_cfg']:.1%}", "≈ DDIM"),
        (f"Text-conditional oracle accuracy, DDIM {txt['ddim_steps']} steps, CFG {g:g}",
         f"{txt['oracle_accuracy_cfg']:.1%}", _target_text("text_oracle_accuracy_cfg")),
        ("  same, guidance scale 1", f"{txt['oracle_accuracy_scale1']:.1%}", "< CFG"),
        ("  shape word / colour word right, CFG",
         f"{txt.get('shape_accuracy_cfg', float('nan')):.1%} / {txt.get('color_accuracy_cfg', float('nan')):.1%}", ""),
        (f"  DPM-Solver++ {txt['fast_steps']} steps, CFG {g:g}",
         f"{txt['oracle_accuracy_dpm_solver_fast_steps_cfg']:.1%}", "≈ DDIM"),
        (f"Unconditional samples ({unc['num_samples']}): TV distance of the class histogram to the data's",
         f"{unc['total_variation']:.3f}", _target_text("unconditional_tv")),
        ("  undecidable (no shape found by the oracle)", f"{unc['undecidable_fraction']:.1%}", ""),
    ]
    machine = report["machine"]
    stages = ", ".join(f"{label} {report[key]['steps' if key == 'autoencoder' else 'train_steps']} steps "
                       f"({report[key]['train_seconds'] / 60:.1f} min, {report[key]['steps_per_second']:.1f} steps/s)"
                       for label, key in STAGES)
    summary = [f"Seed {report['seed']}; {stages}.",
               (f"Total {report['seconds_total'] / 60:.1f} min wall on {machine['cpu_model']} "
               f"({machine['cpu_count']} CPUs, torch {machine['torch_version']}, {machine['torch_threads']} "
               f"thread(s) per process: {report.get('processes', 'one process')}; "
               f"native bf16: {'yes' if machine['native_cpu_bf16'] else 'no'}; precision "
               f"{report['precision']} (autoencoder / class / text))."),
               f"Command: `{report['command']}`"]
    lines = ["# Quick-start report", "", *summary, "", "| metric | value | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "Targets: " + ", ".join(f"{k} {'met' if v['met'] else 'NOT met'}"
                                           for k, v in report["targets"].items()), "",
              f"Grid: `{report['grid']}` (class-conditional, one row per class); text: `{report['grid_text']}`.", ""]
    return "\n".join(lines)


def finite_check(report: dict) -> None:
    """Warn (stderr) about every NaN / inf number in ``report``."""
    def walk(value, where):
        if isinstance(value, float) and not math.isfinite(value):
            print(f"[quickstart] warning: {where} is {value}", file=sys.stderr)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
    walk(report, "report")
