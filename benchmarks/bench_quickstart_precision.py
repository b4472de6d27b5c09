"""Training speed of the quick start's three stages in fp32 and in bf16-mixed, in one run.

    python -m benchmarks.bench_quickstart_precision [--steps 200] [--threads 0] [--out /tmp/qs_precision]

Each stage (autoencoder, class-conditional LDM, text-conditional LDM) trains ``--steps`` steps through
the training CLI exactly as the quick start does (same configs, batch sizes and seed), once per
precision, back to back (so that a change of machine load hits both about equally).
The rate is the stage's progress callback's steps/s (training steps only, no setup). The latent models
train on the autoencoder of the first fp32 run (the weights do not change the cost). Prints a table with
the bf16 / fp32 speed ratio per stage, the CPU model and whether it runs bf16 natively: the quick start's
``precision`` is whichever is faster on the machine it was sized for.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

PRECISIONS = ("32", "bf16-mixed")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per stage and precision")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the quick start's choice)")
    parser.add_argument("--out", default="logs/qs_precision")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    import torch

    from benchmarks.common import describe_device
    from ldm.cli.quickstart_budget import Budget
    from ldm.cli.quickstart_machine import pick_threads
    from ldm.cli.quickstart_training import AUTOENCODER_CONFIG, ldm_config_for, steps_per_second, train_in_process

    threads = pick_threads(args.threads)
    torch.set_num_threads(threads)
    budget, out = Budget(), Path(args.out)
    rows, ae_ckpt = [], None
    stages = [("autoencoder", AUTOENCODER_CONFIG, budget.ae_batch_size),
              ("class LDM", ldm_config_for("class", out), budget.ldm_batch_size),
              ("text LDM", ldm_config_for("text", out), budget.ldm_batch_size)]
    for label, config, batch_size in stages:
        rates = {}
        for precision in PRECISIONS:
            overrides = [] if label == "autoencoder" else [
                f"model.params.first_stage_config.params.ckpt_path={ae_ckpt}"]
            result, ckpt, _ = train_in_process(config, out / "runs", label.replace(" ", "_"), steps=args.steps,
                                               minutes=None, batch_size=batch_size, seed=0, label=label,
                                               overrides=overrides, precision=precision)
            rates[precision] = steps_per_second(result)
            if label == "autoencoder" and ae_ckpt is None:
                ae_ckpt = ckpt
            del result
        rows.append({"stage": label, **rates, "ratio": rates["bf16-mixed"] / rates["32"]})
    print(f"\n{describe_device(torch.device('cpu'))}; torch threads {threads}; {args.steps} steps per stage")
    print("| stage | fp32 steps/s | bf16-mixed steps/s | bf16 / fp32 |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['stage']} | {row['32']:.2f} | {row['bf16-mixed']:.2f} | {row['ratio']:.2f}× |")
    return rows


if __name__ == "__main__":
    main()
