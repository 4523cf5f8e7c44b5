"""The daemon's configuration: defaults, validation, errors that name the field and file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfuse.config import RunConfig, load_config
from streamfuse.errors import ConfigError

SECTIONS = ["mic", "sync", "engine", "http"]


def test_defaults_run_the_demo_pipeline() -> None:
    cfg = load_config(None)
    assert [c.source for c in cfg.cameras] == ["synthetic"] and cfg.mic.source == "synthetic"
    assert cfg.sync_config().cameras == ("video/front",)
    assert cfg.endpoint("video/front") == f"ipc://{cfg.run_dir}/video-front"
    assert Path(cfg.run_dir).is_dir()


def test_the_shipped_example_config_is_every_default() -> None:
    shipped = Path(__file__).resolve().parents[2] / "configs" / "streamfuse.yaml"
    cfg = load_config(shipped)
    default = load_config(None)
    cfg.run_dir = default.run_dir = ""
    assert cfg == default


def test_overrides_replace_sources() -> None:
    cfg = load_config(None, {"camera": "clip.mp4", "mic": "speech.wav", "http_port": 0})
    assert cfg.cameras[0].source == "clip.mp4" and cfg.mic.source == "speech.wav"
    assert cfg.http.port == 0


@settings(max_examples=40, deadline=None)
@given(
    section=st.sampled_from(SECTIONS),
    key=st.from_regex(r"[a-z]{1,8}_?[a-z]{0,8}", fullmatch=True),
)
def test_any_unknown_key_is_named_with_its_file(
    section: str, key: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    known = set(getattr(RunConfig(), section).__struct_fields__)
    if key in known:
        return
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump({section: {key: 1}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == f"{section}.{key}" and info.value.file == str(path)
    assert "unknown setting" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"cameras": [{"name": "a"}, {"name": "a"}]}, "cameras"),
        ({"cameras": [{"name": "a b"}]}, "cameras[0].name"),
        ({"engine": {"max_batch": 0}}, "engine.max_batch"),
        ({"mic": {"rate": "fast"}}, "mic.rate"),
        ({"sync": {"policy": "vibes"}}, "sync.policy"),
        ({"restart_backoff_s": [1]}, "restart_backoff_s"),
    ],
)
def test_bad_values_are_named(raw: dict[str, object], field: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == field and info.value.file == str(path)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"engine: [", b"42\n"])
def test_unreadable_files_are_named(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)
