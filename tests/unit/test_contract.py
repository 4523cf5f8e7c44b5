"""The model contract: annotate / inspect round trips, and every way a contract can disagree
with its graph (or with itself) is one ``error:`` line naming the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfuse.backend import ModelInfo, open_backend
from streamfuse.cli import main
from streamfuse.contract import Contract
from streamfuse.errors import ConfigError

from .. import colour_model as C
from ..conftest import examples


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("m") / "colours.onnx"
    return path, C.build(path)


def _annotate(model: Path, contract: dict[str, Any], tmp: Path) -> Any:
    spec = tmp / "contract.yaml"
    spec.write_text(yaml.safe_dump(contract))
    out = tmp / "out.onnx"
    return CliRunner().invoke(
        main, ["model", "annotate", str(model), "--contract", str(spec), "--out", str(out)]
    ), out


def test_annotate_then_inspect_round_trips(
    bare: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    model, contract = bare
    res, out = _annotate(model, contract, tmp_path)
    assert res.exit_code == 0, res.output
    info = ModelInfo.load(out)
    assert info.labels == ("red", "green", "blue")
    assert info.input_shapes == {"pixels": (96, 128, 3), "mel": (40, 32)}
    assert info.contract.image is not None and info.contract.image.layout == "NHWC"
    res = CliRunner().invoke(main, ["model", "inspect", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["agrees"] and report["contract"]["audio"]["features"] == "log-mel"
    assert [t["name"] for t in report["graph"]["inputs"]] == ["pixels", "mel"]
    assert report["graph"]["inputs"][0] == {
        "name": "pixels",
        "dtype": "uint8",
        "shape": ["N", 96, 128, 3],
    }
    text = CliRunner().invoke(main, ["model", "inspect", str(out)]).output
    assert "agrees   yes" in text and "input    mel: float32 [N, 40, 32]" in text
    # and the annotated model runs: its contract's example inputs through ONNX Runtime
    out_arrays = open_backend("onnxruntime", info).infer(info.example_inputs(2))
    assert out_arrays["probs"].shape == (2, 3)


def test_inspect_of_a_model_without_a_contract_says_so(bare: tuple[Path, dict[str, Any]]) -> None:
    res = CliRunner().invoke(main, ["model", "inspect", str(bare[0])])
    assert res.exit_code == 1
    assert "agrees   NO: model:" in res.output and "streamfuse model annotate" in res.output


def _set(d: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(d)
    *path, last = key.split(".")
    node = out
    for p in path:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return out


_DELETE = object()

#: (key to change, its new value, the key the error must name, words it must contain)
BROKEN = [
    ("image.input", "frames", "contract image.input", "'frames' is not a graph input"),
    ("image.layout", "NCHW", "contract image.color", "channels (rgb) is 3 here but 96"),
    ("image.dtype", "float32", "contract image.dtype", "float32 here but uint8 in the graph"),
    ("image.size", [96, 96], "contract image.size", "width is 96 here but 128"),
    ("image.color", "gray", "contract", "image.mean has 3 values; give 1 (gray)"),
    ("image.frames", 4, "contract image.layout", "want [N, K, H, W, C]"),
    ("image.mean", [0, 0], "contract", "image.mean has 2 values; give 1 or 3"),
    ("image.mean", [0.5, 0.5, 0.5], "contract", "a uint8 input takes the pixels as they are"),
    ("image.resize", "squash", "contract", "image.resize"),
    ("image.pad", 300, "contract", "image.pad"),
    ("image.colour", "rgb", "contract", "unknown field `colour`"),
    ("audio.input", "pcm", "contract audio.input", "'pcm' is not a graph input"),
    ("audio.samples", 8000, "contract audio.samples", "frames (from samples, hop) is 63"),
    ("audio.log_mel.n_mels", 64, "contract audio.log_mel.n_mels", "n_mels is 64 here but 40"),
    ("audio.log_mel.f_max", 6000, "contract", "f_max <= sample_rate/2 (4000)"),
    ("audio.log_mel.win", 512, "contract", "win 512 exceeds n_fft 256"),
    ("audio.features", "pcm", "contract", "audio.log_mel is given but audio.features is pcm"),
    ("audio.sample_rate", 100, "contract", "audio.sample_rate"),
    ("audio", _DELETE, "contract", "outputs.audio names an audio head, but there is no audio"),
    ("audio.input", _DELETE, "contract", "audio: Object missing required field `input`"),
    ("labels", ["a", "b"], "contract labels", "2 labels but 'probs' has 3 classes"),
    ("labels", ["a", "a", "b"], "contract", "labels must differ"),
    ("outputs.fused", "nope", "contract outputs.fused", "'nope' is not a graph output"),
    ("outputs.image", "mel", "contract outputs.image", "'mel' is not a graph output"),
    ("output_kind", "scores", "contract", "output_kind"),
]


@pytest.mark.parametrize(("key", "value", "field", "words"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_contract_that_disagrees_is_one_error_line_naming_the_key(
    bare: tuple[Path, dict[str, Any]], tmp_path: Path, key: str, value: Any, field: str, words: str
) -> None:
    model, contract = bare
    res, out = _annotate(model, _set(contract, key, value), tmp_path)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), lines
    assert words in lines[0]
    assert not out.exists()  # nothing half-written


def test_labels_can_come_from_a_file(bare: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    model, contract = bare
    (tmp_path / "labels.txt").write_text("rouge\nvert\n\nbleu\n")
    spec = {k: v for k, v in contract.items() if k != "labels"} | {"labels_file": "labels.txt"}
    res, out = _annotate(model, spec, tmp_path)
    assert res.exit_code == 0, res.output
    assert ModelInfo.load(out).labels == ("rouge", "vert", "bleu")
    res, _ = _annotate(model, spec | {"labels_file": "missing.txt"}, tmp_path)
    assert res.exit_code == 2 and "error: contract labels_file:" in res.output


def test_the_shipped_model_states_its_contract_in_the_one_schema() -> None:
    info = ModelInfo.load()
    assert "contract" in info.metadata  # not the older per-key metadata
    c = info.contract
    assert c.image is not None and c.audio is not None
    assert (c.image.color, c.image.resize, c.image.interpolation, c.image.size) == (
        "gray",
        "center-crop",
        "area",
        (32, 32),
    )
    assert (c.audio.sample_rate, c.audio.samples, c.audio.features) == (16000, 16000, "pcm")


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=examples(300), deadline=None)
@given(
    key=st.sampled_from(
        [
            "labels",
            "outputs",
            "output_kind",
            "image",
            "audio",
            "image.size",
            "image.mean",
            "image.std",
            "image.scale",
            "image.frames",
            "audio.samples",
            "audio.log_mel",
            "audio.channels",
            "outputs.fused",
        ]
    ),
    value=values,
)
def test_any_value_anywhere_is_a_config_error_or_a_valid_contract(key: str, value: Any) -> None:
    base = C.build.__globals__  # (the contract dict without writing a model)
    contract = {
        "labels": list(base["LABELS"]),
        "outputs": {"fused": "probs", "image": "image_probs", "audio": "audio_probs"},
        "image": {"input": "pixels", "layout": "NHWC", "dtype": "uint8", "size": [96, 128]},
        "audio": {
            "input": "mel",
            "sample_rate": 8000,
            "samples": 4000,
            "features": "log-mel",
            "log_mel": {"n_fft": 256, "hop": 128, "n_mels": 40},
        },
    }
    try:
        parsed = Contract.parse(_set(contract, key, value))
    except ConfigError as err:
        assert str(err).startswith("contract") and "\n" not in str(err)
        return
    # what parses is what it says: it survives its own JSON
    assert Contract.parse(json.loads(parsed.to_json())) == parsed
    if parsed.image is not None and parsed.image.size is not None:
        assert all(1 <= d <= 16384 for d in parsed.image.size)
        assert np.isfinite(parsed.image.effective_scale)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("{not json", "malformed streamfuse metadata"),
        ('{"labels": 5}', "contract: labels: Expected `array`, got `int`"),
        ('{"labels": ["a", "b", "c"], "outputs": {"fused": "probs"}}', "takes an image input, an"),
        (json.dumps({"labels": ["r", "g", "b"], "outputs": {"fused": "probs"},
                     "image": {"input": "pixels", "layout": "NHWC", "dtype": "uint8"}}),
         "the graph has inputs no contract key feeds: ['mel']"),
    ],
)  # fmt: skip
def test_a_hostile_contract_in_the_model_file_is_refused_by_name(
    bare: tuple[Path, dict[str, Any]], tmp_path: Path, value: str, words: str
) -> None:
    import onnx

    proto = onnx.load(str(bare[0]))
    proto.metadata_props.add(key="streamfuse.contract", value=value)
    path = tmp_path / "hostile.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ConfigError) as info:
        ModelInfo.load(path)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert str(path) in str(info.value)
