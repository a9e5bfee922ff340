"""Study B end to end: CNN-1, layer labels (the study's selection and dense labelling), routers, CNN-3,
and the baselines a reader compares per-image depth with.

``run_study(config, workdir)`` (:mod:`.study`) is the whole job (``resnet-jax train`` with a Study B preset). Each stage's result is
kept in the workdir's ledger (``<workdir>/stages.json``, :mod:`resnet_jax.ledger`) and each model is checkpointed every epoch under
``<workdir>/models/<model>/``, so an interrupted run loses at most one epoch and a rerun skips
finished stages. Outputs: ``skip_results.json`` (every number) and ``skip_report.md`` (tables,
figures under ``figures/``).

The training split is cut once (seeded) into a *fit* part, on which every model trains, and a
*validation* part, on which the routers' accuracy is measured and every method's operating point is
chosen; the test split is scored once per operating point.

Readings of CNN-3 (PROTOCOLS.md, Study B):

  * literal: CNN-3 with a 3-way head learns the layer labels of the selected images; each image's
    depth is its label in training; on held-out images it is reported with depth = true label
    (the study; note the depth itself reveals the label), depth = router prediction, and full depth.
  * useful: CNN-3 classifies the dataset's classes, every image (fit and test) at the depth a router
    predicts for it; one CNN-3 per labelling (the study's 10 x 10 selection, dense labelling).

Baselines on the same data and CNN-1 architecture: early exit (:class:`EarlyExitCNN`, a threshold
sweep), random depth with the dense router's histogram, the oracle depth (the shallowest depth at
which the network is right: a bound that needs the label), fixed depths and the full network.
"""

from resnet_jax.studies.skip.points import METHODS, best_points
from resnet_jax.studies.skip.split import load_data, stratified_split
from resnet_jax.studies.skip.study import run_study
from resnet_jax.studies.skip.timing import point_key
from resnet_jax.reporting.skip_verdict import verdict

__all__ = ["METHODS", "best_points", "load_data", "point_key", "run_study", "stratified_split",
           "verdict"]
