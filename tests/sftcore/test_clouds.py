"""The capability table must say what the installed SkyPilot says, reason for reason."""

from __future__ import annotations

from unittest import mock

import pytest

from sftcore.clouds import CLOUDS, Feature, capability_problem, min_name_limit

pytestmark = pytest.mark.requires("sky")


def _sky_unsupported(cloud_key: str) -> dict[str, str]:
    import sky
    from sky import clouds as sky_clouds

    cls = getattr(sky_clouds, CLOUDS[cloud_key].sky_class)
    resources = sky.Resources(cloud=cls(), accelerators="H100:1") if cloud_key == "gcp" else sky.Resources(accelerators="H100:1")
    # Kubernetes asks the live cluster for per-context extras; with no contexts it returns the
    # cloud-wide facts, which is what we record.
    with mock.patch.object(sky_clouds.Kubernetes, "existing_allowed_contexts", return_value=[]):
        found = cls._unsupported_features_for_resources(resources)
    return {feature.name: reason for feature, reason in found.items()}


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_table_matches_installed_skypilot(cloud):
    sky_reasons = _sky_unsupported(cloud)
    for ours in Feature:
        sky_name = ours.value
        if ours in CLOUDS[cloud].unsupported:
            assert sky_name in sky_reasons, f"{cloud}: we say no {ours}, SkyPilot now supports it"
            assert CLOUDS[cloud].unsupported[ours] == sky_reasons[sky_name]
        else:
            assert sky_name not in sky_reasons, f"{cloud}: SkyPilot says no {ours}: {sky_reasons.get(sky_name)}"


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_name_limits_match_skypilot(cloud):
    from sky import clouds as sky_clouds

    cls = getattr(sky_clouds, CLOUDS[cloud].sky_class)
    assert cls._MAX_CLUSTER_NAME_LEN_LIMIT == CLOUDS[cloud].name_limit


def test_capability_problem_quotes_reason():
    assert capability_problem("lambda", Feature.SPOT) == "Lambda: Spot instances are not supported in Lambda"
    assert capability_problem("gcp", Feature.SPOT) is None
    assert min_name_limit(["runpod", "gcp"]) == 35


def test_check_features_reports_every_feature_no_allowed_cloud_can_do():
    """One rule for recipe, planner and render: a feature is refused only when none of the clouds
    allowed can do it, with each cloud's reason in SkyPilot's words."""
    from sftcore.clouds import able_clouds, check_features

    spot, nodes = Feature.SPOT, Feature.MULTI_NODE
    assert check_features([spot, nodes], ["lambda", "runpod"]) == {}  # runpod has spot, lambda nodes
    assert check_features([spot, nodes], ["kubernetes", "lambda"]) == {
        spot: "Kubernetes: Spot instances are not supported in Kubernetes; Lambda: Spot instances are not supported in Lambda",
    }
    assert check_features([spot], ["lambda"]) == {spot: "Lambda: Spot instances are not supported in Lambda"}
    assert check_features([spot], ["lambda", "gcp"]) == {}  # gcp can
    assert check_features([nodes, spot], ["runpod"]) == {  # runpod has spot, not nodes
        nodes: "RunPod: Multi-node not supported yet, as the interconnection among nodes are non-trivial on RunPod",
    }
    assert check_features([spot, nodes], ["local"]) == {} and check_features([spot], []) == {}
    assert able_clouds(spot) == ["runpod", "gcp"] and able_clouds(nodes, ["runpod", "lambda"]) == ["lambda"]


def test_a_capability_is_asked_by_feature_member_never_by_string():
    """A string key would read as "supported" for any misspelling; every lookup refuses one."""
    from sftcore.clouds import able_clouds, asked_features, check_features

    assert asked_features(True, 2) == [Feature.SPOT, Feature.MULTI_NODE] and asked_features(False, 1) == []
    for ask in (lambda: capability_problem("lambda", "spot"), lambda: CLOUDS["lambda"].supports("spot"),
                lambda: check_features(["spot"], ["lambda"]), lambda: check_features(["spot"], []),
                lambda: able_clouds("multi_node")):
        with pytest.raises(TypeError, match="Feature member"):
            ask()
    assert not CLOUDS["lambda"].supports(Feature.SPOT) and CLOUDS["gcp"].supports(Feature.MULTI_NODE)


def test_not_allowed_is_one_wording_for_plan_up_and_render():
    from sftcore.clouds import not_allowed

    assert not_allowed("kubernetes", ["lambda", "gcp"], "r.yaml") == (
        "--cloud kubernetes: r.yaml: resources.clouds: kubernetes is not allowed by the recipe (lambda, gcp); "
        "add it to resources.clouds or pick one of those")
