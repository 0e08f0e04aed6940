"""PSPNet segmenters (paper Sect. 4.3): dilated backbones, the fused form, the aux head, the fast variant."""
import pytest
import torch

import repvgg
from repvgg.blocks import RepVGGBlock
from repvgg.seg import create_segmenter, list_segmenters
from tests.conftest import randomize_bn_, rel_err

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_registry_names_every_zoo_model_fast_variant_and_resnet_baseline():
    names = list_segmenters()
    assert {"pspnet_repvgg_a0", "pspnet_repvgg_b1g2_fast", "pspnet_resnet18", "pspnet_resnet50",
            "pspnet_resnet101"} <= set(names) and len(names) == 2 * len(repvgg.list_models()) + 3
    with pytest.raises(ValueError, match="unknown segmenter"):
        create_segmenter("unet_a0", 5)
    assert repvgg.create_segmenter is create_segmenter and repvgg.list_segmenters() == names   # the API


@pytest.mark.parametrize("name", ["pspnet_repvgg_a0", "pspnet_repvgg_a0_fast"])
def test_fused_segmenter_is_exact_and_drops_the_aux_head(name):
    seg = randomize_bn_(create_segmenter(name, 5).double())
    x = torch.randn(2, 3, 67, 53, dtype=torch.float64)                  # odd sizes
    main_out, aux = seg.train()(x)
    assert main_out.shape == aux.shape == (2, 5, 67, 53)
    seg.eval()
    with torch.no_grad():
        ref = seg(x)
        fused = repvgg.reparameterize(seg)
        assert fused.aux_head is None and seg.aux_head is not None
        assert all(b.deploy for b in fused.modules() if isinstance(b, RepVGGBlock))
        out = fused(x)
    assert rel_err(out, ref) <= 1e-9 and torch.equal(out.argmax(1), ref.argmax(1))


def test_dilation_is_in_every_branch_and_fast_dilates_the_last_five_blocks_only():
    full = create_segmenter("pspnet_repvgg_a0", 3).backbone
    fast = create_segmenter("pspnet_repvgg_a0_fast", 3).backbone
    dil = lambda m: [b.dilation for b in m.modules() if isinstance(b, RepVGGBlock)]   # noqa: E731
    # stage 3: its first block keeps dilation 1 (as torchvision), 13 more at 2; stage 4: its one block at 2
    assert sum(d > 1 for d in dil(full)) == 13 + 1 and sum(d > 1 for d in dil(fast)) == 5
    assert [f.shape[-1] for f in full(torch.randn(1, 3, 64, 64))] == [8, 8]          # output stride 8
    assert [f.shape[-1] for f in fast(torch.randn(1, 3, 64, 64))] == [8, 8]
    block = [b for b in full.modules() if isinstance(b, RepVGGBlock) and b.dilation == 2][1]
    assert block.conv3x3.conv.dilation == (2, 2) and block.identity is not None      # 1x1/identity: centre tap


def test_a_classification_checkpoint_loads_as_the_backbone(tmp_path):
    cls = randomize_bn_(repvgg.create_model("repvgg_a0", num_classes=10)).eval()
    path = repvgg.save_checkpoint(cls, tmp_path / "a0.safetensors")
    seg = create_segmenter("pspnet_repvgg_a0", 4, backbone_checkpoint=path)
    assert torch.equal(seg.backbone.stem.conv3x3.conv.weight, cls.stem.conv3x3.conv.weight)
    r18 = create_segmenter("pspnet_resnet18", 4).eval()
    assert r18(torch.randn(1, 3, 40, 40)).shape == (1, 4, 40, 40)


def test_a_torchvision_resnet_checkpoint_loads_into_the_baseline(tmp_path):
    import torchvision

    from repvgg.checkpoint import CheckpointError

    tv = randomize_bn_(torchvision.models.resnet18(num_classes=7))
    path = tmp_path / "resnet18-tv.pth"
    torch.save(tv.state_dict(), path)                       # torchvision's own file layout, fc included
    seg = create_segmenter("pspnet_resnet18", 4, backbone_checkpoint=path)
    assert torch.equal(seg.backbone.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    assert torch.equal(seg.backbone.stem[1].running_var, tv.bn1.running_var)
    assert seg.backbone.layer4[1].conv2.dilation == (4, 4)                          # dilated, same weights
    gray = create_segmenter("pspnet_resnet18", 4, in_chans=1, backbone_checkpoint=path)
    assert torch.allclose(gray.backbone.stem[0].weight, tv.conv1.weight.sum(1, keepdim=True))
    with pytest.raises(CheckpointError, match="not a resnet50 checkpoint.*shape differs"):
        create_segmenter("pspnet_resnet50", 4, backbone_checkpoint=path)
    a0 = repvgg.save_checkpoint(repvgg.create_model("repvgg_a0", num_classes=10), tmp_path / "a0.safetensors")
    with pytest.raises(CheckpointError, match="not a resnet18 checkpoint.*missing"):
        create_segmenter("pspnet_resnet18", 4, backbone_checkpoint=a0)


def test_speed_pairs_time_the_exported_files_in_onnxruntime():
    pytest.importorskip("onnxruntime")
    from repvgg.seg.bench import compare_speed

    rows = compare_speed(["pspnet_resnet18", "pspnet_repvgg_a0"], size=48, classes=3, repeats=1,
                         head_channels=8, runtime="onnxruntime", threads=1)
    assert [r["model"] for r in rows] == ["pspnet_resnet18", "pspnet_repvgg_a0"]
    assert all(r["ms"] > 0 and r["gmacs_head"] > 0 for r in rows) and rows[0]["speed_vs_first"] == 1.0
    with pytest.raises(ValueError, match="unknown runtime"):
        compare_speed(["pspnet_resnet18"], size=48, runtime="tensorrt")
