"""What each cloud can and cannot do, as data, with the reason SkyPilot itself gives.

Why a table of our own: validation, planning and rendering must answer "can lambda do spot?"
without importing SkyPilot (slow) and before any credentials exist. The reasons are copied from
SkyPilot 0.14's cloud classes (`sky.clouds.<Cloud>._CLOUD_UNSUPPORTED_FEATURES` and
`_unsupported_features_for_resources`); tests/launcher/test_clouds.py checks they still match
the installed SkyPilot, so an upgrade that changes a capability fails loudly instead of drifting.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum


class Feature(Enum):
    """A cloud capability; the value is SkyPilot's CloudImplementationFeatures member name.

    An Enum, not strings: a misspelt key would silently read as "supported" in the table below,
    so every lookup takes a member (and refuses anything else)."""

    SPOT = "SPOT_INSTANCE"
    MULTI_NODE = "MULTI_NODE"
    STOP = "STOP"
    AUTOSTOP = "AUTOSTOP"
    STORAGE_MOUNTING = "STORAGE_MOUNTING"
    NETWORK_TIER = "CUSTOM_NETWORK_TIER"  # `network_tier: best` (render asks it for multi-node)


def asked_features(spot: bool, nodes: int) -> list[Feature]:
    """The capabilities a run with this spot setting and node count needs from its cloud."""
    return [f for f, on in ((Feature.SPOT, spot), (Feature.MULTI_NODE, nodes > 1)) if on]


@dataclass(frozen=True)
class Cloud:
    name: str  # our key, also SkyPilot's cloud name in task YAML
    display: str
    sky_class: str  # attribute of `sky.clouds`
    name_limit: int  # SkyPilot's _MAX_CLUSTER_NAME_LEN_LIMIT
    # feature -> SkyPilot's reason it is unsupported (absent = supported)
    unsupported: dict[Feature, str] = field(default_factory=dict)
    notes: str = ""

    def supports(self, feature: Feature) -> bool:
        return _feature(feature) not in self.unsupported


def _feature(feature: Feature) -> Feature:
    if not isinstance(feature, Feature):
        raise TypeError(f"a capability is a sftcore.clouds.Feature member, not {feature!r}")
    return feature


CLOUDS: dict[str, Cloud] = {
    "lambda": Cloud(
        name="lambda", display="Lambda", sky_class="Lambda", name_limit=57,
        unsupported={
            Feature.STOP: "Lambda cloud does not support stopping VMs.",
            Feature.SPOT: "Spot instances are not supported in Lambda.",
            Feature.NETWORK_TIER: "Custom network tier is currently not supported in Lambda.",
        },
        notes="No VM image ids (docker: images are fine); A100-80GB only as 8x.",
    ),
    "runpod": Cloud(
        name="runpod", display="RunPod", sky_class="RunPod", name_limit=120,
        unsupported={
            Feature.STOP: "Stopping not supported.",
            Feature.MULTI_NODE: "Multi-node not supported yet, as the interconnection among nodes are non-trivial on RunPod.",
            Feature.STORAGE_MOUNTING: (
                "Mounting object stores is not supported on RunPod. To read data from object stores on "
                "RunPod, use `mode: COPY` to copy the data to local disk."
            ),
            Feature.NETWORK_TIER: "Custom network tier is not supported yet on RunPod.",
        },
        notes="Image must be Debian/Ubuntu with bash and apt; H100 (PCIe) vs H100-SXM are distinct GPUs.",
    ),
    "gcp": Cloud(name="gcp", display="GCP", sky_class="GCP", name_limit=35),
    "kubernetes": Cloud(
        name="kubernetes", display="Kubernetes", sky_class="Kubernetes", name_limit=42,
        unsupported={
            Feature.STOP: "Stopping clusters is not supported on Kubernetes.",
            Feature.AUTOSTOP: "Auto-stop is not supported on Kubernetes.",
            Feature.SPOT: "Spot instances are not supported in Kubernetes.",
            # Cloud-wide; SkyPilot lifts it for a cluster with high-performance networking, which
            # the launcher cannot see, so render never asks it there.
            Feature.NETWORK_TIER: "Custom network tier is not supported in this Kubernetes cluster.",
        },
        notes="The user's own cluster (kubeconfig); autodown works, autostop does not.",
    ),
}


def capability_problem(cloud: str, feature: Feature) -> str | None:
    """SkyPilot's reason `cloud` cannot do `feature`, or None when it can."""
    c = CLOUDS.get(cloud)
    if c is None:
        return None
    reason = c.unsupported.get(_feature(feature))
    if reason is None:
        return None
    return f"{c.display}: {reason.rstrip('.')}"


def able_clouds(feature: Feature, among: Iterable[str] | None = None) -> list[str]:
    """The clouds (of `among`, in its order; default every cloud) that can do `feature`."""
    return [c for c in (CLOUDS if among is None else among) if c in CLOUDS and not capability_problem(c, feature)]


def check_features(features: Iterable[Feature], clouds: Iterable[str]) -> dict[Feature, str]:
    """The one capability rule, in the spirit of SkyPilot's `Cloud.check_features_are_supported`
    (features requested of resources -> every unsupported feature with its reason): for the
    features asked and the clouds allowed, each feature that *no* allowed cloud can do, mapped to
    every allowed cloud's reason in SkyPilot's words ("; "-joined). Empty when each feature has a
    cloud able to do it. Clouds that are not SkyPilot's (local) are not asked.

    Asked at recipe validation of resources.clouds (sftcore/recipe/rules.py), and once more only
    where a flag changes what validation saw: `--cloud` narrowing the clouds or a spot override
    (launcher.estimate.candidates.refuse_unsupported, inside `plan`, which plan, render and up
    all resolve their target through)."""
    known = [c for c in clouds if c in CLOUDS]
    problems: dict[Feature, str] = {}
    for feature in map(_feature, features):
        reasons = [capability_problem(c, feature) for c in known]
        if known and all(reasons):
            problems[feature] = "; ".join(r for r in reasons if r)
    return problems


def not_allowed(cloud: str, allowed: Iterable[str], where: str) -> str:
    """The one wording for a --cloud the recipe does not allow (plan, up, render)."""
    allowed = list(allowed)
    return (f"--cloud {cloud}: {where}: resources.clouds: {cloud} is not allowed by the recipe ({', '.join(allowed)}); "
            f"add it to resources.clouds or pick one of those")


def min_name_limit(clouds: list[str]) -> int:
    limits = [CLOUDS[c].name_limit for c in clouds if c in CLOUDS]
    return min(limits) if limits else 35
