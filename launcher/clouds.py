"""What each cloud can and cannot do, as data, with the reason SkyPilot itself gives.

Why a table of our own: validation, planning and rendering must answer "can lambda do spot?"
without importing SkyPilot (slow) and before any credentials exist. The reasons are copied from
SkyPilot 0.14's cloud classes (`sky.clouds.<Cloud>._CLOUD_UNSUPPORTED_FEATURES` and
`_unsupported_features_for_resources`); tests/launcher/test_clouds.py checks they still match
the installed SkyPilot, so an upgrade that changes a capability fails loudly instead of drifting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Our feature name -> SkyPilot's CloudImplementationFeatures member name.
SKY_FEATURE = {
    "spot": "SPOT_INSTANCE",
    "multi_node": "MULTI_NODE",
    "stop": "STOP",
    "autostop": "AUTOSTOP",
    "storage_mounting": "STORAGE_MOUNTING",
}


@dataclass(frozen=True)
class Cloud:
    name: str  # our key, also SkyPilot's cloud name in task YAML
    display: str
    sky_class: str  # attribute of `sky.clouds`
    name_limit: int  # SkyPilot's _MAX_CLUSTER_NAME_LEN_LIMIT
    # feature -> SkyPilot's reason it is unsupported (absent = supported)
    unsupported: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    def supports(self, feature: str) -> bool:
        return feature not in self.unsupported


CLOUDS: dict[str, Cloud] = {
    "lambda": Cloud(
        name="lambda", display="Lambda", sky_class="Lambda", name_limit=57,
        unsupported={
            "stop": "Lambda cloud does not support stopping VMs.",
            "spot": "Spot instances are not supported in Lambda.",
        },
        notes="No VM image ids (docker: images are fine); A100-80GB only as 8x.",
    ),
    "runpod": Cloud(
        name="runpod", display="RunPod", sky_class="RunPod", name_limit=120,
        unsupported={
            "stop": "Stopping not supported.",
            "multi_node": "Multi-node not supported yet, as the interconnection among nodes are non-trivial on RunPod.",
            "storage_mounting": (
                "Mounting object stores is not supported on RunPod. To read data from object stores on "
                "RunPod, use `mode: COPY` to copy the data to local disk."
            ),
        },
        notes="Image must be Debian/Ubuntu with bash and apt; H100 (PCIe) vs H100-SXM are distinct GPUs.",
    ),
    "gcp": Cloud(name="gcp", display="GCP", sky_class="GCP", name_limit=35),
    "kubernetes": Cloud(
        name="kubernetes", display="Kubernetes", sky_class="Kubernetes", name_limit=42,
        unsupported={
            "stop": "Stopping clusters is not supported on Kubernetes.",
            "autostop": "Auto-stop is not supported on Kubernetes.",
            "spot": "Spot instances are not supported in Kubernetes.",
        },
        notes="The user's own cluster (kubeconfig); autodown works, autostop does not.",
    ),
}


def capability_problem(cloud: str, feature: str) -> str | None:
    """SkyPilot's reason `cloud` cannot do `feature`, or None when it can."""
    c = CLOUDS.get(cloud)
    if c is None:
        return None
    reason = c.unsupported.get(feature)
    if reason is None:
        return None
    return f"{c.display}: {reason.rstrip('.')}"


def min_name_limit(clouds: list[str]) -> int:
    limits = [CLOUDS[c].name_limit for c in clouds if c in CLOUDS]
    return min(limits) if limits else 35
