"""iwae_core: importance weighted autoencoders whose weights may be random, trained and evaluated.

The mathematics is in maths/, the dashboard's background training runs in runs/, Ray sweeps, sharded
evaluation and DDP in scale/; config, data, train, evaluate, curves, compare, zoo and cli are the rest of the
engine.
"""

from pathlib import Path

# the folder that holds this package: a source checkout (with pretrained/ beside it) or site-packages;
# worker processes get it on PYTHONPATH so that they import this very copy of the package
SOURCE_ROOT = Path(__file__).resolve().parent.parent
