"""Registry of named NF-ResNet configs; every `nf_*` name has a BatchNorm twin `bn_*`."""

from __future__ import annotations

from dataclasses import fields, replace

from nfdeploy.models.nf_resnet import NFResNet, NFResNetCfg, ResidualBlock

_IMAGENET_BASIC = (64, 128, 256, 512)
_IMAGENET_BOTTLENECK = (256, 512, 1024, 2048)
_SMALL = dict(stem="small", stem_width=16, channels=(16, 32, 64), num_classes=10, input_size=32)

_NF_CFGS: dict[str, NFResNetCfg] = {
    "nf_resnet18": NFResNetCfg(block="basic", depths=(2, 2, 2, 2), channels=_IMAGENET_BASIC),
    "nf_resnet26": NFResNetCfg(block="bottleneck", depths=(2, 2, 2, 2), channels=_IMAGENET_BOTTLENECK),
    "nf_resnet34": NFResNetCfg(block="basic", depths=(3, 4, 6, 3), channels=_IMAGENET_BASIC),
    "nf_resnet50": NFResNetCfg(block="bottleneck", depths=(3, 4, 6, 3), channels=_IMAGENET_BOTTLENECK),
    "nf_resnet101": NFResNetCfg(block="bottleneck", depths=(3, 4, 23, 3), channels=_IMAGENET_BOTTLENECK),
    "nf_seresnet50": NFResNetCfg(
        block="bottleneck", depths=(3, 4, 6, 3), channels=_IMAGENET_BOTTLENECK, se_ratio=1 / 16
    ),
    # Small-image family (32x32 inputs, CIFAR-style 6n+2 depth): trains in minutes on 2 cores.
    "nf_resnet_c8": NFResNetCfg(block="basic", depths=(1, 1, 1), **_SMALL),
    "nf_resnet_c20": NFResNetCfg(block="basic", depths=(3, 3, 3), **_SMALL),
    "nf_resnet_c56": NFResNetCfg(block="basic", depths=(9, 9, 9), **_SMALL),
    "nf_seresnet_c20": NFResNetCfg(block="basic", depths=(3, 3, 3), se_ratio=0.25, **_SMALL),
    "nf_resnet_c26b": NFResNetCfg(
        block="bottleneck",
        depths=(2, 2, 2),
        stem="small",
        stem_width=16,
        channels=(64, 128, 256),
        num_classes=10,
        input_size=32,
    ),
}

_CFGS: dict[str, NFResNetCfg] = dict(_NF_CFGS)
_CFGS.update({"bn_" + k[len("nf_") :]: replace(v, norm="bn") for k, v in _NF_CFGS.items()})

CFG_FIELDS = {f.name for f in fields(NFResNetCfg)}


def list_models() -> list[str]:
    return sorted(_CFGS)


def get_config(name: str, **overrides) -> NFResNetCfg:
    if name not in _CFGS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    unknown = set(overrides) - CFG_FIELDS
    if unknown:
        raise KeyError(f"unknown model option(s) {sorted(unknown)} for {name!r}")
    return replace(_CFGS[name], **overrides)


def twin_name(name: str) -> str:
    """nf_resnet50 <-> bn_resnet50."""
    if name.startswith("nf_"):
        return "bn_" + name[3:]
    if name.startswith("bn_"):
        return "nf_" + name[3:]
    raise KeyError(f"{name!r} has no twin")


def create_model(name: str, **overrides) -> NFResNet:
    return NFResNet(get_config(name, **overrides))


__all__ = ["NFResNet", "NFResNetCfg", "ResidualBlock", "create_model", "get_config", "list_models", "twin_name"]
