"""The sparse state's inputs: a profile file that is not one is refused, and so is a sparsity that
would leave a layer with no weight (hand-made cases, and random bytes as a profile)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mest.errors import ConfigError, SchemeError
from mest.models import build_model
from mest.sparsity import SparseState, check_profile, read_profile


@pytest.mark.parametrize("content, message", [
    ("{}", "names no layer: nothing would be sparse"),
    ("[]", "must be a JSON object of FQN -> sparsity"),
    ('"layer1.0.conv1.weight"', "must be a JSON object"),
    ('{"layer1.0.conv1.weight": 0.5, "layer1.0.conv1.weight": 0.7}', "names 'layer1.0.conv1.weight' twice"),
    ('{"layer1.0.conv1.weight": 1.0}', "sparsity 1.0 of layer1.0.conv1.weight"),
    ('{"layer1.0.conv1.weight": -0.1}', "sparsity -0.1 of"),
    ('{"layer1.0.conv1.weight": NaN}', "sparsity nan of"),
    ('{"layer1.0.conv1.weight": Infinity}', "sparsity inf of"),
    ('{"layer1.0.conv1.weight": true}', "sparsity True of"),
    ('{"layer1.0.conv1.weight": "0.5"}', "sparsity '0.5' of"),
    ('{"layer1.0.conv1.weight": {"sparsity": 0.5}}', "sparsity {'sparsity': 0.5} of"),
    ("{not json", "cannot read sparsity profile"),
    ("[" * 100_000, "cannot read sparsity profile"),
])
def test_a_profile_that_is_not_one_is_refused(tmp_path, content, message):
    path = tmp_path / "profile.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        read_profile(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_profile_must_name_parameters_of_the_model(tmp_path):
    model = build_model("tiny", 10, 1)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"layer1.0.conv1.weight": 0.5, "layer9.conv.weight": 0.5}))
    with pytest.raises(ConfigError, match="names 'layer9.conv.weight', which is not a parameter of the model"):
        check_profile(read_profile(path), model, path)
    path.write_text(json.dumps({"layer1.0.conv1.weight": 0.5}))
    assert check_profile(read_profile(path), model, path) == {"layer1.0.conv1.weight": 0.5}


@settings(max_examples=50, deadline=None)
@given(content=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
        st.sampled_from(["layer1.0.conv1.weight", "conv1.weight", "bn1.weight", "linear.bias", "x"]),
        st.one_of(st.floats(), st.integers(-2, 2), st.booleans(), st.none(), st.text(max_size=3)), max_size=3)),
))
def test_random_bytes_as_a_profile_raise_only_mest_errors(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("profile") / "profile.json"
    path.write_bytes(content)
    model = build_model("tiny", 10, 1)
    try:
        SparseState.prune_init(model, check_profile(read_profile(path), model, path), "irregular")
    except (ConfigError, SchemeError) as err:
        assert "\n" not in str(err)
