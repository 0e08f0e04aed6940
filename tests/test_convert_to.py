"""Checkpoints out, not only in: `repvgg convert --to official|timm|mmpretrain` and hubconf.py.

The official and mmpretrain layouts are written here as data, from each project's model
definition (not from our keys): DingXiaoH/RepVGG repvgg.py (``stage0`` block, ``stage1..4``
ModuleLists of blocks with ``rbr_dense``/``rbr_1x1`` conv+bn, ``rbr_identity`` BN where in == out
and stride 1, ``rbr_reparam`` when deployed, ``se.down/up`` with out // 16 hidden, ``linear``) and
mmpretrain models/backbones/repvgg.py (``backbone.stem``, ``backbone.stage_1..4``, ``branch_3x3`` /
``branch_1x1`` conv+norm, ``branch_norm``, ``branch_reparam``; ``head.fc`` of LinearClsHead).
timm is checked for real: its ``create_model`` strict-loads the file and computes our outputs.
"""
import pytest
import torch

import repvgg
from repvgg.cli import main
from tests.conftest import randomize_bn_, rel_err

pytestmark = pytest.mark.usefixtures("one_thread")

# The official repo's create_RepVGG_* arguments: blocks per stage, width multipliers, groups, SE.
GROUPWISE = [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26]
OFFICIAL = {
    "repvgg_a0": ([2, 4, 14, 1], [0.75, 0.75, 0.75, 2.5], 1, False),
    "repvgg_b1g2": ([4, 6, 16, 1], [2, 2, 2, 4], 2, False),
    "repvgg_d2se": ([8, 14, 24, 1], [2.5, 2.5, 2.5, 5], 1, True),
}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _blocks(name):
    """(in, out, stride, groups) of every block in the official order: stage0, then stages 1-4."""
    num_blocks, wm, g, se = OFFICIAL[name]
    in_planes = min(64, int(64 * wm[0]))
    blocks, layer = [("stage0", 3, in_planes, 2, 1)], 1
    for s, (n, planes) in enumerate(zip(num_blocks, (64, 128, 256, 512)), start=1):
        out = int(planes * wm[s - 1])
        for j in range(n):
            blocks.append((f"stage{s}.{j}", in_planes, out, 2 if j == 0 else 1, g if layer in GROUPWISE else 1))
            in_planes, layer = out, layer + 1
    return blocks, in_planes, se


def official_layout(name, num_classes, deploy):
    blocks, last, se = _blocks(name)
    keys = {}
    for prefix, cin, cout, stride, g in blocks:
        if deploy:
            keys[f"{prefix}.rbr_reparam.weight"] = (cout, cin // g, 3, 3)
            keys[f"{prefix}.rbr_reparam.bias"] = (cout,)
        else:
            for branch, k in (("rbr_dense", 3), ("rbr_1x1", 1)):
                keys[f"{prefix}.{branch}.conv.weight"] = (cout, cin // g, k, k)
                keys.update({f"{prefix}.{branch}.bn.{b}": (cout,) if b != "num_batches_tracked" else () for b in BN})
            if cin == cout and stride == 1:
                keys.update({f"{prefix}.rbr_identity.{b}": (cout,) if b != "num_batches_tracked" else () for b in BN})
        if se:
            keys.update({f"{prefix}.se.down.weight": (cout // 16, cout, 1, 1), f"{prefix}.se.down.bias": (cout // 16,),
                         f"{prefix}.se.up.weight": (cout, cout // 16, 1, 1), f"{prefix}.se.up.bias": (cout,)})
    keys.update({"linear.weight": (num_classes, last), "linear.bias": (num_classes,)})
    return keys


def mmpretrain_layout(name, num_classes, deploy):
    """mmpretrain's layout of the same network (no SE models here: its SE config differs per arch)."""
    rename = {"rbr_dense": "branch_3x3", "rbr_1x1": "branch_1x1", "rbr_identity": "branch_norm",
              "rbr_reparam": "branch_reparam", "bn": "norm"}
    keys = {}
    for key, shape in official_layout(name, num_classes, deploy).items():
        if key.startswith("linear."):
            keys["head.fc." + key.split(".")[-1]] = shape
            continue
        parts = key.split(".")
        stage = "stem" if parts[0] == "stage0" else f"stage_{parts[0][5:]}"
        keys["backbone." + ".".join([stage] + [rename.get(p, p) for p in parts[1:]])] = shape
    return keys


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = {}
    folder = tmp_path_factory.mktemp("to")
    for name in OFFICIAL:
        torch.manual_seed(0)
        model = randomize_bn_(repvgg.create_model(name, num_classes=5)).eval()
        out[name] = (model, repvgg.save_checkpoint(model, folder / f"{name}.safetensors"))
    return out


@pytest.mark.parametrize("form", ["train", "deploy"])
@pytest.mark.parametrize("to, layout, names", [
    ("official", official_layout, list(OFFICIAL)),
    ("mmpretrain", mmpretrain_layout, ["repvgg_a0", "repvgg_b1g2"]),
])
def test_layout_matches_their_definition_and_round_trips(trained, tmp_path, to, layout, names, form):
    x = torch.randn(2, 3, 32, 32)
    for name in names:
        model, path = trained[name]
        dst = tmp_path / f"{name}_{to}_{form}.pth"
        assert main(["convert", str(path), str(dst), "--to", to, "--form", form]) == 0
        obj = torch.load(dst, weights_only=True)
        sd = obj["state_dict"] if to == "mmpretrain" else obj
        assert {k: tuple(v.shape) for k, v in sd.items()} == layout(name, 5, form == "deploy"), name
        back = repvgg.model_from_checkpoint(dst, name=name, num_classes=5)    # their file, read by us
        assert rel_err(back.eval()(x), model(x)) < 1e-5


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_timm_strict_loads_the_file_and_computes_our_outputs(trained, tmp_path, form, capsys):
    timm = pytest.importorskip("timm")
    model, path = trained["repvgg_a0"]
    dst = tmp_path / f"a0_timm_{form}.safetensors"
    assert main(["convert", str(path), str(dst), "--to", "timm", "--form", form]) == 0
    assert "timm naming" in capsys.readouterr().out
    theirs = timm.create_model("repvgg_a0", num_classes=5, pretrained=False, checkpoint_path="")
    if form == "deploy":
        from timm.utils.model import reparameterize_model

        theirs = reparameterize_model(theirs)
    from safetensors.torch import load_file

    theirs.load_state_dict(load_file(dst), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(theirs.eval()(x), model(x)) < 1e-5


def test_export_refuses_what_their_code_cannot_build(tmp_path):
    small = repvgg.create_model("repvgg_a0", num_classes=5, small_input=True)
    path = repvgg.save_checkpoint(small, tmp_path / "s.safetensors")
    assert main(["convert", str(path), str(tmp_path / "o.pth"), "--to", "official"]) == 2
    qa = repvgg.create_model("repvgg_a0", num_classes=5, block="qa")
    path = repvgg.save_checkpoint(qa, tmp_path / "qa.safetensors")
    assert main(["convert", str(path), str(tmp_path / "q.pth"), "--to", "timm"]) == 2
    assert main(["convert", str(path), str(tmp_path / "q.safetensors"), "--to", "official"]) == 2
    assert not list(tmp_path.glob("[oq].*"))


# ------------------------------------------------------------------ torch.hub
def test_hubconf_builds_every_zoo_model_offline(monkeypatch, tmp_path):
    import pathlib

    repo = pathlib.Path(__file__).resolve().parent.parent
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for name in repvgg.list_models():
        with torch.device("meta"):                    # shapes only: every entry point, no memory
            model = torch.hub.load(str(repo), name, source="local", num_classes=10, deploy=True)
        assert model.build_args["name"] == name and model.num_classes == 10 and model.is_deployed
    model = torch.hub.load(str(repo), "repvgg_a0", source="local", num_classes=10)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_hubconf_pretrained_goes_through_our_download_path(monkeypatch, tmp_path):
    """pretrained=True: the official weights are fetched by repvgg.hub (here a local file URL)."""
    import pathlib

    repo = pathlib.Path(__file__).resolve().parent.parent
    ref = randomize_bn_(repvgg.create_model("repvgg_a0")).eval()
    from repvgg.keymaps import from_ours

    weights = tmp_path / "RepVGG-A0-train.pth"
    torch.save(from_ours(ref.state_dict(), "official"), weights)
    seen = []

    def fake_download(url, dst, hash_prefix=None, progress=True):     # the network, replaced by a local file
        seen.append((url, hash_prefix))
        pathlib.Path(dst).write_bytes(weights.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setenv("REPVGG_CACHE", str(tmp_path / "cache"))
    model = torch.hub.load(str(repo), "repvgg_a0", source="local", pretrained=True)
    x = torch.randn(1, 3, 32, 32)
    assert seen[0][0].startswith("https://download.openmmlab.com/") and seen[0][1] == "883ab98c"
    assert rel_err(model.eval()(x), ref(x)) < 1e-5
