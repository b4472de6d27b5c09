"""The quick start over several seeds (and optionally with one core kept busy): one table for docs/quality.md.

    python -m benchmarks.bench_quickstart_seeds --seeds 23 24 25 --out logs/qs_seeds
    python -m benchmarks.bench_quickstart_seeds --seeds 23 --busy --out logs/qs_seeds    # + one core kept busy
    python -m benchmarks.bench_quickstart_seeds --out logs/qs_seeds --read                # only read finished runs
    python -m benchmarks.bench_quickstart_seeds --seeds 23 --out /tmp/q -- --threads 1     # extra quick-start flags

Each run is ``python -m ldm.cli.quickstart --seed S --out <out>/seed<S>[_busy]``. With ``--busy`` a second
process spins on one core for the whole run (what a user's other work does to the quick start): the step
budgets must make it reach the same step counts and, up to the float-summation order of a different thread
count, the same metrics. Prints a markdown table (one row per run: steps, PSNR, oracle accuracies with and
without guidance, unconditional TV, wall time, threads) and, per metric, whether every run met its target.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import REPO_ROOT
from ldm.cli.quickstart_report import TARGETS, reproducible_numbers

SPIN = "while True: pass"


def run_one(seed: int, out: Path, busy: bool, extra: list[str]) -> Path:
    cmd = [sys.executable, "-m", "ldm.cli.quickstart", "--seed", str(seed), "--out", str(out), *extra]
    print("running:", " ".join(cmd), "(one core kept busy)" if busy else "", flush=True)
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        subprocess.run(cmd, cwd=REPO_ROOT, check=True)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return out / "report.json"


def row(name: str, report: dict) -> list[str]:
    ae, cls, txt = report["autoencoder"], report["class_conditional"], report["text_conditional"]
    unc = cls["unconditional"]
    return [name, f"{ae['steps']}/{cls['train_steps']}/{txt['train_steps']}", f"{ae['psnr_db']:.2f}",
            f"{cls['oracle_accuracy_cfg']:.1%} ({cls['oracle_accuracy_scale1']:.1%})",
            f"{txt['oracle_accuracy_cfg']:.1%} ({txt['oracle_accuracy_scale1']:.1%})",
            f"{unc['total_variation']:.3f}", f"{report['seconds_total'] / 60:.1f}",
            f"{ae['steps_per_second']:.1f}/{cls['steps_per_second']:.1f}/{txt['steps_per_second']:.1f}",
            str(report["threads"])]


HEADER = ["run", "steps AE/class/text", "AE PSNR dB", "class acc. CFG (scale 1)", "text acc. CFG (scale 1)",
          "uncond. TV", "wall min", "steps/s AE/class/text", "threads"]


def table(named_reports: list[tuple[str, dict]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row(name, report)) + " |" for name, report in named_reports]
    if named_reports:
        machine = named_reports[0][1]["machine"]
        lines.append(f"\nCPU: {machine['cpu_model']} ({machine['cpu_count']} CPUs), torch {machine['torch_version']}, "
                     f"precision {named_reports[0][1]['precision']}.")
        met = []
        guidance = ["class_conditional_guidance_beats_scale1", "text_conditional_guidance_beats_scale1"]
        for name in list(TARGETS) + guidance:
            hits = sum(bool(report["targets"][name]["met"]) for _, report in named_reports)
            met.append(f"{name} {hits}/{len(named_reports)}")
        lines.append("Targets met (runs): " + ", ".join(met) + ".")
    return "\n".join(lines)


def compare(name: str, idle: dict, busy: dict) -> str:
    """One line: did the run with a busy core reach the same steps, and how far apart are the metrics?"""
    a, b = reproducible_numbers(idle), reproducible_numbers(busy)
    steps = [key for key in a if key.endswith("steps")]
    same_steps = all(a[key] == b[key] for key in steps)
    accuracy = max(abs(a[key] - b[key]) for key in a if "oracle_accuracy" in key)
    return (f"{name} vs {name}_busy: step counts {'identical' if same_steps else 'DIFFERENT'}; largest accuracy "
            f"difference {accuracy * 100:.1f} points, "
            f"PSNR difference {abs(a['autoencoder.psnr_db'] - b['autoencoder.psnr_db']):.2f} "
            f"dB, TV difference {abs(a['unconditional.total_variation'] - b['unconditional.total_variation']):.3f}; "
            f"threads {idle['threads']} vs {busy['threads']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[23, 24, 25])
    parser.add_argument("--busy", action="store_true", help="keep one core busy with a spinning process")
    parser.add_argument("--out", default="logs/quickstart_seeds", help="one sub-directory per run")
    parser.add_argument("--read", action="store_true", help="run nothing: tabulate every report under --out")
    parser.add_argument("quickstart_args", nargs="*", help="extra quick-start flags (after --)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not args.read:
        for seed in args.seeds:
            run_one(seed, out / f"seed{seed}{'_busy' if args.busy else ''}", args.busy, args.quickstart_args)
    reports = [(path.parent.name, json.loads(path.read_text())) for path in sorted(out.glob("*/report.json"))]
    reports = [(name, report) for name, report in reports if "targets" in report]
    if not reports:
        raise SystemExit(f"bench_quickstart_seeds: error: no finished quick-start report under {out}")
    print(table(reports))
    by_name = dict(reports)
    for name, report in reports:
        if f"{name}_busy" in by_name:
            print(compare(name, report, by_name[f"{name}_busy"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
