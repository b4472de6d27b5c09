#!/usr/bin/env bash
# The README's first command: set up .venv (if needed), then train the demo autoencoder and the
# class- and text-conditional latent diffusion models on the built-in shapes data, sample and
# evaluate. Each stage trains a fixed number of steps from a fixed seed (same numbers on any machine,
# only the time varies). Output (grid + report): logs/quickstart/ (see --out). Options: --help, --seed,
# --fast, --ae-steps/--class-steps/--text-steps, --ae-minutes/--ldm-minutes (explicit time boxes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec python -m ldm.cli.quickstart "$@"
