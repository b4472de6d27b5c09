#!/usr/bin/env bash
# The README's first command: set up .venv (if needed), then train the demo autoencoder and the
# class- and text-conditional latent diffusion models on the built-in shapes data, sample and
# evaluate. Output (grid + report): logs/quickstart/ (see --out). Options: --help, --fast.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec python -m ldm.cli.quickstart "$@"
