"""examples/flax_resnet18.py: the flax examples' ResNet18 trains, saves, and loads as ``ablate --model`` calls it."""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from examples import flax_resnet18
from resnet_jax.ablation import catalogue


def _folder(root, n_per_class: int = 4):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n_per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_train_saves_what_load_returns_and_the_layers_read_as_the_examples_name_them(tmp_path):
    out = tmp_path / "runs" / "params.msgpack"
    result = flax_resnet18.train(str(_folder(tmp_path / "data")), str(out), epochs=1, batch_size=4)
    assert 0.0 <= result["test_accuracy"] <= 1.0 and out.is_file()
    model, variables, kwargs = flax_resnet18.load(checkpoint=str(out), num_classes="2")
    assert kwargs == {"train": False} and set(variables) == {"params", "batch_stats"}
    logits = model.apply(variables, jnp.zeros((3, 32, 32, 3)), **kwargs)
    assert logits.shape == (3, 2)
    names = [l.name for l in catalogue.catalogue(model, variables, input_shape=(1, 32, 32, 3), apply_kwargs=kwargs)]
    assert names[:3] == ["conv_init", "ResNetBlock_0.Conv_0", "ResNetBlock_0.Conv_1"]
    assert "ResNetBlock_2.conv_proj" in names and names[-1] == "Dense_0"
    assert len(names) == 1 + 8 * 2 + 3 + 1  # stem, two convs per block, three projections, the head
    n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
    assert n_params == 11_689_512 - (512 * 1000 + 1000) + (512 * 2 + 2)  # torchvision's ResNet18, a 2-class head
