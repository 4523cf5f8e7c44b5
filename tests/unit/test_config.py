"""The daemon's configuration: defaults, validation, errors that name the field and file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfuse.config import (
    EngineConfig,
    HttpConfig,
    MicConfig,
    RunConfig,
    SyncSection,
    load_config,
)
from streamfuse.errors import ConfigError

SECTIONS = ["mic", "sync", "engine", "http"]


def test_defaults_run_the_demo_pipeline() -> None:
    cfg = load_config(None)
    assert [c.source for c in cfg.cameras] == ["synthetic"] and cfg.mic.source == "synthetic"
    assert cfg.sync_config().cameras == ("video/front",)
    assert cfg.run_dir == ""  # the supervisor makes (and removes) a fresh folder
    cfg.run_dir = "/run/sf"
    assert cfg.endpoint("video/front") == "ipc:///run/sf/video-front"


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
        # accepted before, and then silently wrong or a child in a restart loop (issue 12)
        ({"cameras": [{"fps": float("nan")}]}, "cameras[0].fps"),
        ({"cameras": [{"fps": -30}]}, "cameras[0].fps"),
        ({"cameras": [{"jpeg": 500}]}, "cameras[0].jpeg"),
        ({"cameras": [{"width": 0}]}, "cameras[0].width"),
        ({"mic": {"rate": 0}}, "mic.rate"),
        ({"mic": {"window_ms": -1}}, "mic.window_ms"),
        ({"mic": {"hop_ms": -500}}, "mic.hop_ms"),
        ({"mic": {"window_ms": 500, "hop_ms": 1000}}, "mic.hop_ms"),
        ({"sync": {"tolerance_ms": -1}}, "sync.tolerance_ms"),
        ({"sync": {"offsets_ms": {"video/front": float("inf")}}}, "sync.offsets_ms[...]"),
        ({"engine": {"sndhwm": -5}}, "engine.sndhwm"),
        ({"engine": {"sndhwm": 10**12}}, "engine.sndhwm"),
        ({"engine": {"threads": -3}}, "engine.threads"),
        ({"engine": {"output": "tcp://127.0.0.1:99999"}}, "engine.output"),
        ({"engine": {"output": "udp://x"}}, "engine.output"),
        ({"http": {"port": 99999}}, "http.port"),
        ({"http": {"port": -1}}, "http.port"),
        ({"restart_backoff_s": [-1, -1]}, "restart_backoff_s[0]"),
        ({"restart_backoff_s": [5, 1]}, "restart_backoff_s"),
        ({"hang_timeout_s": float("nan")}, "hang_timeout_s"),
        ({"run_dir": "/tmp/" + "x" * 100}, "run_dir"),
    ],
)
def test_bad_values_are_named(raw: dict[str, object], field: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == field and info.value.file == str(path)


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\x00garbage", b"engine: [", b"42\n", b"[" * 5000 + b"]" * 5000, b"a: &x [*x]"],
)
def test_unreadable_files_are_named(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


# Structure-aware: the schema's own keys with values of every kind, nested, at the edges.
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["", "tcp://127.0.0.1:0", "tcp://h:99999", "ipc:///x", "cpu", "cuda:0"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
_keys = {
    "cameras": ["name", "source", "fps", "width", "height", "jpeg"],
    "mic": list(MicConfig.__struct_fields__),
    "sync": list(SyncSection.__struct_fields__),
    "engine": list(EngineConfig.__struct_fields__),
    "http": list(HttpConfig.__struct_fields__),
}


@st.composite
def _configs(draw: st.DrawFn) -> dict[str, object]:
    raw: dict[str, object] = {}
    for section in draw(st.lists(st.sampled_from([*_keys, "run_dir", "hang_timeout_s",
                                                  "restart_backoff_s"]), max_size=4)):  # fmt: skip
        if section not in _keys:
            raw[section] = draw(_values)
            continue
        body = {
            k: draw(_values) for k in draw(st.lists(st.sampled_from(_keys[section]), max_size=3))
        }
        raw[section] = [body] if section == "cameras" and draw(st.booleans()) else body
    return raw


@settings(max_examples=300, deadline=None)
@given(raw=_configs())
def test_any_config_loads_or_is_one_line_naming_field_and_file(
    raw: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    try:
        cfg = load_config(path)
    except ConfigError as err:
        assert err.file == str(path) and err.field
        assert "\n" not in str(err) and str(path) in str(err)
    else:  # what loads is within the documented ranges
        assert 0 <= cfg.http.port <= 65535 and 1 <= cfg.engine.max_batch <= 256
        assert all(c.fps is None or 0 < c.fps <= 1000 for c in cfg.cameras)
        assert cfg.mic.hop_ms <= cfg.mic.window_ms


def test_the_shipped_foxglove_layout_is_what_the_command_prints() -> None:
    """configs/foxglove-layout.json is `streamfuse foxglove-layout` for the defaults."""
    from streamfuse.config import load_config
    from streamfuse.fox import layout

    cfg = load_config(None)
    shipped = Path(__file__).parents[2] / "configs" / "foxglove-layout.json"
    assert shipped.read_text() == layout([cfg.camera_topic(c) for c in cfg.cameras], cfg.mic_topic)


HINT = "(streamfuse keys generate), or set security.insecure: true"


@pytest.mark.parametrize(
    ("raw", "field", "problem"),
    [
        (
            {"cameras": [{"name": "a", "topic": "video/x"}, {"name": "b", "topic": "video/x"}]},
            "cameras",
            "two sensors publish on one topic: ['video/x', 'video/x', 'audio/mic0']",
        ),
        (
            {"cameras": [{"name": "a", "topic": "video/x"}, {"name": "a", "topic": "video/y"}]},
            "cameras",
            "camera names must differ, got ['a', 'a']",
        ),
        (
            {"cameras": [{"name": "a"}, {"name": "b", "topic": "audio/x"}]},
            "cameras[1].topic",
            "a camera's topic starts video/",
        ),
        ({"mic": {"topic": "video/m"}}, "mic.topic", "a microphone's topic starts audio/"),
        ({"cameras": []}, "cameras", "list at least one camera"),
        (
            {"restart_backoff_s": [5, 1]},
            "restart_backoff_s",
            "the first delay 5.0 exceeds the largest 1.0",
        ),
        (
            {"mic": {"window_ms": 500, "hop_ms": 1000}},
            "mic.hop_ms",
            "1000.0 is longer than window_ms 500.0",
        ),
        (
            {"engine": {"output": "tcp://127.0.0.1:65536"}},
            "engine.output",
            "'tcp://127.0.0.1:65536': use tcp://HOST:PORT with PORT 1-65535",
        ),
        (
            {"engine": {"output": "tcp://:5"}},
            "engine.output",
            "'tcp://:5': use tcp://HOST:PORT with PORT 1-65535",
        ),
        (
            {"engine": {"output": "ipc:///" + "x" * 107}},
            "engine.output",
            f"'ipc:///{'x' * 107}': an ipc path is at most 107 bytes",
        ),
        (
            {"cameras": [{"name": "a", "endpoint": "tcp://127.0.0.1:0"}]},
            "endpoint",
            "'tcp://127.0.0.1:0': use tcp://HOST:PORT with PORT 1-65535",
        ),
        (
            {"engine": {"output": "tcp://10.1.2.3:5560"}},
            "engine.output",
            f"tcp://10.1.2.3:5560 leaves this box: set security.key {HINT}",
        ),
        (
            {"cameras": [{"name": "a"}, {"name": "b", "endpoint": "tcp://10.1.2.3:5555"}]},
            "cameras[1].server_key",
            f"tcp://10.1.2.3:5555 (video/b) is beyond this box: give its key {HINT}",
        ),
        (
            {"mic": {"endpoint": "tcp://10.1.2.3:5556"}},
            "mic.server_key",
            f"tcp://10.1.2.3:5556 (audio/mic0) is beyond this box: give its key {HINT}",
        ),
    ],
)
def test_each_refusal_names_its_field_and_says_why(
    raw: dict[str, object], field: str, problem: str, tmp_path: Path
) -> None:
    """The whole message a user reads, not only the field (mutmut's survivors: a refusal
    with the wrong field, no message, or another message)."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.field, info.value.problem) == (field, problem)
    assert str(info.value) == f"{field} in {path}: {problem}"


@pytest.mark.parametrize(
    "raw",
    [
        {"engine": {"output": "tcp://127.0.0.1:65535"}},
        {"engine": {"output": "tcp://127.0.0.1:1"}},
        {"engine": {"output": "tcp://*:*"}, "security": {"insecure": True}},
        {"engine": {"output": "ipc:///" + "x" * 106}},  # 107 bytes: the most
        {"restart_backoff_s": [1, 1]},
        {"mic": {"window_ms": 500, "hop_ms": 500}},
        {"engine": {"output": "tcp://10.1.2.3:5560"}, "security": {"insecure": True}},
    ],
)
def test_the_edges_of_each_refusal_are_accepted(raw: dict[str, object], tmp_path: Path) -> None:
    """One step inside each refusal's limit loads."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    load_config(path)  # raises if refused


def test_sync_settings_reach_the_synchronizer_in_nanoseconds(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    raw = {
        "cameras": [{"name": "front"}, {"name": "side"}],
        "sync": {"policy": "k-frames", "tolerance_ms": 12.5, "max_wait_ms": 250,
                 "offsets_ms": {"video/side": -3.25}},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    s = cfg.sync_config(k=3)
    assert s.cameras == ("video/front", "video/side") and s.policy == "k-frames" and s.k == 3
    assert (s.tolerance, s.max_wait, s.retain) == (12_500_000, 250_000_000, 2_000_000_000)
    assert dict(s.offsets) == {"video/side": -3_250_000}
    assert cfg.sync_config().k == type(s)(cameras=s.cameras).k  # k=1: the policy's default
