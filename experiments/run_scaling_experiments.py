"""Run nanollm's scaling experiments: the same as `nanollm experiments` (see its --help).

    python experiments/run_scaling_experiments.py --quick
    python experiments/run_scaling_experiments.py --grids depth,width --out experiments/results
    python experiments/run_scaling_experiments.py --grid my_grid.toml
"""

import sys

from nanollm.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiments", *sys.argv[1:]]))
