"""Ablations as data: a layer catalogue, specs that select layers, masks, the batched engine that scores many
masked models in one compiled call, the study's protocols, the content-keyed store and the paired decisions::

    from resnet_jax.ablation import AblationSpec, Selector, evaluate, layer_catalogue, resolve_all, restore_subject
    run = restore_subject("runs/cifar10-resnet34-cpu")          # a trained run: model, weights, test data
    layers = layer_catalogue(run.model, run.variables, input_shape=(1, *run.images.shape[1:]))
    specs = [AblationSpec(l.name, "zero-kernel", (Selector(names=(l.name,)),)) for l in layers if l.stage == 4]
    results = evaluate(run.model, run.variables, resolve_all(specs, layers), layers, run.images, run.targets,
                       image_mean=run.image_mean, image_std=run.image_std, metric=run.metric)
"""

from resnet_jax.ablation.catalogue import (KINDS, ROLES, Ablation, AblationSpec, Layer, Selector, SpecError, apply,
                                           load_specs, make_mask, parse_spec, resolve_all)
from resnet_jax.ablation.catalogue import catalogue as layer_catalogue  # the module keeps the name `catalogue`
from resnet_jax.ablation.engine import Result, evaluate
from resnet_jax.ablation.networks import ModelError
from resnet_jax.ablation.protocols import BASELINE, PROTOCOLS, STUDY_PROTOCOLS, ablate, protocol_specs, run_protocol
from resnet_jax.ablation.statistics import DECISIONS, Decision, annotate, compare_models, paired_tester
from resnet_jax.ablation.store import ResultStore
from resnet_jax.ablation.subjects import Subject, restore_subject

__all__ = ["BASELINE", "DECISIONS", "KINDS", "PROTOCOLS", "ROLES", "STUDY_PROTOCOLS", "Ablation", "AblationSpec",
           "Decision", "Layer", "ModelError", "Result", "ResultStore", "Selector", "SpecError", "Subject", "ablate",
           "annotate", "apply", "compare_models", "evaluate", "layer_catalogue", "load_specs", "make_mask", "paired_tester", "parse_spec",
           "protocol_specs", "resolve_all", "restore_subject", "run_protocol"]
