"""``python -m clipsift.eval.train_main ARGS``: open_clip's trainer with clipsift's model configs.

torchrun starts fresh interpreters; this shim registers ``model_configs/`` in each before calling
``open_clip_train.main.main`` with the unchanged argument list.
"""

import sys

from clipsift.eval.train import register_model_configs, seed_sample_shuffle

if __name__ == "__main__":
    register_model_configs()
    seed_sample_shuffle()
    from open_clip_train.main import main

    sys.exit(0 if main(sys.argv[1:]) != -1 else 1)
