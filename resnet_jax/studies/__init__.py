"""The studies: the commands that run a whole experiment (``ablate``, ``eliminate``, ``reproduce``, Study B) as
resumable stages over the library, one module each.

    resnet-jax reproduce --preset smoke --workdir runs/smoke --data-root ../shared/data
"""

__all__ = ["ablate", "comparison", "eliminate", "qualitative", "reproduce", "reproduce_presets", "seeds", "skip",
           "slim", "user_model"]
