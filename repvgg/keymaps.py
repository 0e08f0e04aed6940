"""State-dict key namings of the other RepVGG implementations, mapped onto ours.

Checked against the public sources (Nov 2026):

- official, DingXiaoH/RepVGG ``repvgg.py``: ``stage0`` is the stem block, ``stage1..stage4`` are
  ``nn.Sequential`` stages; branches ``rbr_dense`` / ``rbr_1x1`` (``conv`` + ``bn``), ``rbr_identity``
  (a bare BatchNorm2d), fused ``rbr_reparam``; SE ``se.down`` / ``se.up`` (1x1 convs with bias);
  classifier ``linear``.
- timm ``timm/models/byobnet.py`` ``RepVggBlock`` (repvgg_* configs, stem_type "rep"): the stem is
  one block named ``stem``, stages ``stages.0..3``; branches ``conv_kxk`` / ``conv_1x1``
  (``conv`` + ``bn``), ``identity`` (a bare BatchNormAct2d), fused ``reparam_conv``; SE
  ``attn.fc1`` / ``attn.fc2``; classifier ``head.fc``.
- mmpretrain / mmcls ``models/backbones/repvgg.py``: ``backbone.stem`` is a block, stages
  ``backbone.stage_1..stage_4``; branches ``branch_3x3`` / ``branch_1x1`` (``conv`` + ``norm``),
  ``branch_norm`` (bare BN), fused ``branch_reparam``; SE ``se_layer.conv1.conv`` /
  ``se_layer.conv2.conv`` (ConvModule); classifier ``head.fc`` (LinearClsHead).

Ours: ``stem``, ``stages.I.J``; ``conv3x3`` / ``conv1x1`` (``conv`` + ``bn``), ``identity.bn``,
fused ``fused``; SE ``se.reduce`` / ``se.expand``; ``head.fc``. Stage and SE layouts agree in all
four (SE after the sum of branches, hidden width C // 16), so a rename is all it takes.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)$"


def _stage(offset: int) -> Callable[[re.Match], str]:
    return lambda m: f"stages.{int(m[1]) - offset}."


# Each naming: ordered (pattern, replacement) rewrites from its keys to ours.
RENAMES: dict[str, list[tuple[str, str | Callable]]] = {
    "repvgg": [],
    "official": [
        (r"^stage0\.", "stem."),
        (r"^stage(\d+)\.", _stage(1)),
        (r"\.rbr_dense\.", ".conv3x3."),
        (r"\.rbr_1x1\.", ".conv1x1."),
        (r"\.rbr_identity\." + _BN, r".identity.bn.\1"),
        (r"\.rbr_reparam\.", ".fused."),
        (r"\.se\.down\.", ".se.reduce."),
        (r"\.se\.up\.", ".se.expand."),
        (r"^linear\.", "head.fc."),
    ],
    "timm": [
        (r"\.conv_kxk\.", ".conv3x3."),
        (r"\.conv_1x1\.", ".conv1x1."),
        (r"\.identity\." + _BN, r".identity.bn.\1"),
        (r"\.reparam_conv\.", ".fused."),
        (r"\.attn\.fc1\.", ".se.reduce."),
        (r"\.attn\.fc2\.", ".se.expand."),
    ],
    "mmpretrain": [
        (r"^backbone\.", ""),
        (r"^stage_(\d+)\.", _stage(1)),
        (r"\.branch_3x3\.norm\.", ".conv3x3.bn."),
        (r"\.branch_1x1\.norm\.", ".conv1x1.bn."),
        (r"\.branch_3x3\.", ".conv3x3."),
        (r"\.branch_1x1\.", ".conv1x1."),
        (r"\.branch_norm\." + _BN, r".identity.bn.\1"),
        (r"\.branch_reparam\.", ".fused."),
        (r"\.se_layer\.conv1\.conv\.", ".se.reduce."),
        (r"\.se_layer\.conv2\.conv\.", ".se.expand."),
    ],
}

# A key that only this naming has, in train form or in deploy form.
MARKERS: dict[str, re.Pattern] = {
    "repvgg": re.compile(r"\.(conv3x3|fused)\."),
    "official": re.compile(r"(^|\.)rbr_(dense|1x1|identity|reparam)\."),
    "timm": re.compile(r"\.(conv_kxk|reparam_conv)\."),
    "mmpretrain": re.compile(r"\.branch_(3x3|1x1|norm|reparam)\."),
}

_COMPILED = {name: [(re.compile(p), r) for p, r in rules] for name, rules in RENAMES.items()}


def detect_naming(keys) -> str | None:
    """The naming whose markers the keys carry ("repvgg", "official", "timm", "mmpretrain")."""
    keys = list(keys)
    hits = {name: sum(bool(rx.search(k)) for k in keys) for name, rx in MARKERS.items()}
    best = max(hits, key=hits.get)
    return best if hits[best] else None


def rename_key(key: str, naming: str) -> str:
    for rx, repl in _COMPILED[naming]:
        key = rx.sub(repl, key)
    return key


def to_ours(state_dict: Mapping, naming: str) -> dict:
    """Rename every key of a ``naming`` state dict to our naming (values untouched)."""
    return {rename_key(k, naming): v for k, v in state_dict.items()}


# Our keys -> theirs, the reverse of RENAMES, for writing checkpoints their code loads strictly.
EXPORT_RENAMES: dict[str, list[tuple[str, str | Callable]]] = {
    "repvgg": [],
    "official": [
        (r"^stem\.", "stage0."),
        (r"^stages\.(\d+)\.", lambda m: f"stage{int(m[1]) + 1}."),
        (r"\.conv3x3\.", ".rbr_dense."),
        (r"\.conv1x1\.", ".rbr_1x1."),
        (r"\.identity\.bn\.", ".rbr_identity."),
        (r"\.fused\.", ".rbr_reparam."),
        (r"\.se\.reduce\.", ".se.down."),
        (r"\.se\.expand\.", ".se.up."),
        (r"^head\.fc\.", "linear."),
    ],
    "timm": [
        (r"\.conv3x3\.", ".conv_kxk."),
        (r"\.conv1x1\.", ".conv_1x1."),
        (r"\.identity\.bn\.", ".identity."),
        (r"\.fused\.", ".reparam_conv."),
        (r"\.se\.reduce\.", ".attn.fc1."),
        (r"\.se\.expand\.", ".attn.fc2."),
    ],
    "mmpretrain": [
        (r"^stages\.(\d+)\.", lambda m: f"stage_{int(m[1]) + 1}."),
        (r"\.conv3x3\.bn\.", ".branch_3x3.norm."),
        (r"\.conv1x1\.bn\.", ".branch_1x1.norm."),
        (r"\.conv3x3\.", ".branch_3x3."),
        (r"\.conv1x1\.", ".branch_1x1."),
        (r"\.identity\.bn\.", ".branch_norm."),
        (r"\.fused\.", ".branch_reparam."),
        (r"\.se\.reduce\.", ".se_layer.conv1.conv."),
        (r"\.se\.expand\.", ".se_layer.conv2.conv."),
        (r"^(?!head\.)", "backbone."),          # the classifier head stays outside the backbone
    ],
}
_EXPORT = {name: [(re.compile(p), r) for p, r in rules] for name, rules in EXPORT_RENAMES.items()}
# Parts of our keys that only the paper's block has names for elsewhere (variants do not export).
_OURS_ONLY = re.compile(r"\.(post_bn|conv3x1|conv1x3|dirac_alpha|dirac_beta)\.|\.identity\.(weight|bias|running)")


def from_ours(state_dict: Mapping, naming: str) -> dict:
    """Rename our keys to ``naming``'s; refuses keys that naming has no place for (block variants)."""
    if naming not in _EXPORT:
        raise ValueError(f"unknown naming {naming!r}; choose one of {', '.join(_EXPORT)}")
    out = {}
    for key, value in state_dict.items():
        if naming != "repvgg" and _OURS_ONLY.search("." + key):
            raise ValueError(f"{key}: a block variant that {naming}'s RepVGG does not have; only the paper's "
                             "block (block='repvgg') exports to other namings")
        new = key
        for rx, repl in _EXPORT[naming]:
            new = rx.sub(repl, new)
        out[new] = value
    if naming != "repvgg" and to_ours(out, naming).keys() != state_dict.keys():
        raise ValueError(f"the {naming} naming does not round-trip these keys; not written")
    return out
