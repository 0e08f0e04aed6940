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
