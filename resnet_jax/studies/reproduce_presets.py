"""The presets of ``resnet-jax reproduce``: which config each task trains and how large each stage's work is.

``timing_repeats``: rounds of the elimination's side-by-side timing; 6 is the fewest whose speed ratios get a 95 %
interval (:mod:`resnet_jax.ablation.speed`), so with fewer speeds are not compared. The smoke preset's 0 times
nothing: it checks wiring, and compiling a train step and an eval program per compared model cost its cold run
about 72 s for speeds it could not compare (``comparison.compare`` with 1 round, in ``test_elimination``, keeps
the timing's wiring tested).

Usage: ``PRESETS["smoke"]``, the preset ``resnet-jax reproduce --preset smoke`` runs.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"cifar": "cifar10-resnet34-smoke", "acdc": "acdc-pspnet34-smoke", "skip": "mnist-skip-smoke",
              "ablate_examples": 64, "verify_examples": 64, "pairs_seeds": 1, "finetune_epochs": 1,
              "random_draws": 1, "timing_repeats": 0, "force_untrained": True},  # tiny models learn little
    "cpu": {"cifar": "cifar10-resnet34-cpu", "acdc": "acdc-pspnet34-cpu", "skip": "mnist-skip-cpu",
            "ablate_examples": None, "verify_examples": 1000, "pairs_seeds": 1, "finetune_epochs": 2,
            "random_draws": 3, "timing_repeats": 6},  # each random set is fine-tuned too: 3 keep the stage CPU-sized
    "paper-cpu": {"cifar": "cifar10-resnet34-paper-cpu", "acdc": "acdc-pspnet34-cpu", "skip": "mnist-skip-cpu",
                  "ablate_examples": None, "verify_examples": 1000, "pairs_seeds": 1, "finetune_epochs": 2,
                  "random_draws": 3, "timing_repeats": 6},  # classification aiming at the study's accuracy, on a CPU
    "full": {"cifar": "cifar10-resnet34", "acdc": "acdc-pspnet34", "skip": "mnist-skip",
             "ablate_examples": None, "verify_examples": None, "pairs_seeds": 1, "finetune_epochs": 10,
             "random_draws": 5, "timing_repeats": 6},
}
