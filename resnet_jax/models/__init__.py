"""Models: ResNets in torchvision's layout (so ``layer3.0.downsample`` names the same layer as in PyTorch),
PSPNet with a ResNet encoder, and Study B's CNNs.

    from resnet_jax.models import ResNet34, layer_paths
    model = ResNet34(num_classes=10)
"""

from resnet_jax.models.pspnet import PSPNet
from resnet_jax.models.resnet import (MODELS, ResNet, ResNet18, ResNet34, ResNet50, canonical_name, conv_names,
                                      create_model, layer_paths)
from resnet_jax.models.skip_cnn import EarlyExitCNN, Router, SkipCNN

__all__ = ["MODELS", "EarlyExitCNN", "PSPNet", "ResNet", "ResNet18", "ResNet34", "ResNet50", "Router", "SkipCNN",
           "canonical_name", "conv_names", "create_model", "layer_paths"]
