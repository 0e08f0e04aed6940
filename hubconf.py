"""torch.hub entry points: ``torch.hub.load("owner/repvgg", "repvgg_a0", pretrained=True, num_classes=10)``.

One entry per zoo model, each a thin call of :func:`repvgg.create_model` (so every keyword it takes
works here: ``deploy``, ``num_classes``, ``features_only``...). ``pretrained=True`` goes through
repvgg.hub: downloaded once into the cache, hash-checked, used offline from then on.
"""
import repvgg as _repvgg

dependencies = ["torch", "torchvision", "safetensors"]


def _entry(name: str):
    def build(pretrained: bool = False, **kwargs):
        return _repvgg.create_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = name
    build.__doc__ = f"RepVGG {name} (see repvgg.create_model for the keyword arguments)."
    return build


for _name in _repvgg.list_models():
    globals()[_name] = _entry(_name)
