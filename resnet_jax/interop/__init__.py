"""PyTorch interop: torchvision state_dicts both ways, slim models exported, ablation tables recomputed in torch.
torch itself is imported only inside the functions that need it."""

from resnet_jax.interop.convert import from_torch_state_dict, load_torch_checkpoint, to_torch_state_dict
from resnet_jax.interop.export import export_run, load_exported

__all__ = ["export_run", "from_torch_state_dict", "load_exported", "load_torch_checkpoint", "to_torch_state_dict"]
