"""Vision Transformers (torchvision's ``VisionTransformer``): ``vit_b_16`` and a tiny one.

A ViT's first layer group is not a module: the patch projection (``conv_proj``) comes with
two bare parameters, the class token and the position embedding, which is why layer groups
are lists of parameters. Both are spared weight decay, as in the ViT and DeiT recipes: decay
would pull the learnt positions and the CLS query towards zero.
"""

from torchvision.models import VisionTransformer

from app.families.base import HALF, ArchitectureSpec, Layout, ModelFamily, torchvision_spec

# For CPUs and 32 px images (about 140k parameters): 8x8 patches of 4 px, 4 blocks of width 64.
TINY = {
    "image_size": 32,
    "patch_size": 4,
    "num_layers": 4,
    "num_heads": 4,
    "hidden_dim": 64,
    "mlp_dim": 128,
}


def vit_tiny(num_classes: int) -> VisionTransformer:
    """The tiny ViT, randomly initialised."""
    return VisionTransformer(num_classes=num_classes, **TINY)


def _layout(model: VisionTransformer) -> Layout:
    embed = ("embed", ("conv_proj", "class_token", "encoder.pos_embedding"))
    count = len(model.encoder.layers)
    blocks: Layout = [
        (f"block{i + 1}", (f"encoder.layers.encoder_layer_{i}",)) for i in range(count)
    ]
    # The final LayerNorm goes with the last block: a group of its own would be 2 vectors
    # whose rate sits between the top block's and the head's for no reason.
    last, prefixes = blocks[-1]
    blocks[-1] = (last, (*prefixes, "encoder.ln"))
    return [embed, *blocks, ("head", ("heads",))]


FAMILY = ModelFamily[VisionTransformer](
    name="vit",
    model_types=(VisionTransformer,),
    architectures=(
        # The position embedding is sized for the image: other input sizes do not run.
        torchvision_spec("vit_b_16", fixed_input_size=True),
        ArchitectureSpec("vit_tiny", vit_tiny, 32, HALF, HALF, fixed_input_size=True),
    ),
    layout=_layout,
    # Sequential(head=Linear): with the head as Identity the model returns the CLS token after
    # the final LayerNorm; the family's default ReLU after it makes the features non-negative.
    head_attribute="heads",
    no_weight_decay=frozenset({"class_token", "encoder.pos_embedding"}),
)
