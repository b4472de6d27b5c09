"""Quality of the quick start on the embedded shapes data, against its targets (ldm.cli.quickstart_report).

    python -m benchmarks.bench_quality                          # runs the full quick start (~15 min), then prints
    python -m benchmarks.bench_quality --report logs/quickstart/report.json    # only reads a finished run
    python -m benchmarks.bench_quality --out /tmp/q -- --seed 24                # extra flags go to the quick start

Prints one table: autoencoder PSNR, class- and text-conditional oracle accuracy with classifier-free
guidance and at guidance scale 1, DDIM vs DPM-Solver++ at fewer steps, and the total variation
distance between the unconditional samples' class histogram and the data's - each with its target
and whether it was met. Numbers reached are recorded in docs/quality.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import REPO_ROOT as ROOT
from ldm.cli.quickstart_report import TARGETS


def quality_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(metric, value, target, met?) rows of a quick-start ``report.json``."""
    ae, cls, txt = report["autoencoder"], report["class_conditional"], report["text_conditional"]
    unc = cls["unconditional"]
    g, steps, few = cls["guidance_scale"], cls["ddim_steps"], cls["fast_steps"]

    def mark(ok: bool) -> str:
        return "yes" if ok else "NO"

    def target(name: str, value: float) -> tuple[str, str]:
        threshold, kind = TARGETS[name]
        return (f">= {threshold:g}", mark(value >= threshold)) if kind == "min" else \
            (f"<= {threshold:g}", mark(value <= threshold))

    return [
        ("autoencoder PSNR (dB, validation)", f"{ae['psnr_db']:.2f}", *target("autoencoder_psnr_db", ae["psnr_db"])),
        (f"class oracle acc., DDIM {steps}, CFG {g:g}", f"{cls['oracle_accuracy_cfg']:.3f}",
         *target("class_oracle_accuracy_cfg", cls["oracle_accuracy_cfg"])),
        (f"class oracle acc., DDIM {steps}, scale 1", f"{cls['oracle_accuracy_scale1']:.3f}", "< CFG",
         mark(cls["oracle_accuracy_scale1"] < cls["oracle_accuracy_cfg"])),
        (f"class oracle acc., DDIM {few}, CFG {g:g}", f"{cls['oracle_accuracy_ddim_fast_steps_cfg']:.3f}", "", ""),
        (f"class oracle acc., DPM-Solver++ {few}, CFG {g:g}",
         f"{cls['oracle_accuracy_dpm_solver_fast_steps_cfg']:.3f}", f">= DDIM {few}",
         mark(cls["oracle_accuracy_dpm_solver_fast_steps_cfg"] >= cls["oracle_accuracy_ddim_fast_steps_cfg"])),
        (f"text oracle acc., DDIM {steps}, CFG {g:g}", f"{txt['oracle_accuracy_cfg']:.3f}",
         *target("text_oracle_accuracy_cfg", txt["oracle_accuracy_cfg"])),
        (f"text oracle acc., DDIM {steps}, scale 1", f"{txt['oracle_accuracy_scale1']:.3f}", "< CFG",
         mark(txt["oracle_accuracy_scale1"] < txt["oracle_accuracy_cfg"])),
        (f"text oracle acc., DPM-Solver++ {few}, CFG {g:g}", f"{txt['oracle_accuracy_dpm_solver_fast_steps_cfg']:.3f}",
         "", ""),
        ("unconditional: TV(class histogram, data)", f"{unc['total_variation']:.3f}",
         *target("unconditional_tv", unc["total_variation"])),
        ("unconditional: undecidable fraction", f"{unc['undecidable_fraction']:.3f}", "", ""),
    ]


def format_table(report: dict) -> str:
    rows = [("metric", "value", "target", "met")] + quality_rows(report)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    ae, cls, txt = report["autoencoder"], report["class_conditional"], report["text_conditional"]
    lines.append(f"\ntraining: autoencoder {ae['steps']} steps / {ae['train_seconds'] / 60:.1f} min, class LDM "
                 f"{cls['train_steps']} steps / {cls['train_seconds'] / 60:.1f} min, text LDM {txt['train_steps']} "
                 f"steps / {txt['train_seconds'] / 60:.1f} min; total {report['seconds_total'] / 60:.1f} min on "
                 f"{report['threads']} thread(s), seed {report.get('seed', '?')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", help="read this report.json instead of running the quick start")
    parser.add_argument("--out", default="logs/quickstart", help="quick-start output directory")
    parser.add_argument("quickstart_args", nargs="*", help="extra quick-start flags (after --)")
    args = parser.parse_args(argv)
    report_path = Path(args.report) if args.report else Path(args.out) / "report.json"
    if not args.report:
        cmd = [sys.executable, "-m", "ldm.cli.quickstart", "--out", args.out, *args.quickstart_args]
        print("running:", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
        from benchmarks.common import describe_device

        print(f"# measured on: {describe_device('cpu')}")
    if not report_path.is_file():
        raise SystemExit(f"bench_quality: no report at {report_path}")
    report = json.loads(report_path.read_text())
    if report.get("fast"):
        print("note: this report comes from a --fast smoke run; its numbers say nothing about quality")
    print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
