"""Train or test a model from YAML configs. See ``python main.py --help`` and docs/cli.md."""
from ldm.cli.train import main

if __name__ == "__main__":
    main()
