"""The daemon's configuration: defaults, validation, errors that name the field and file."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import yaml
import zmq.auth
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfuse.config import (
    EngineConfig,
    HttpConfig,
    MicConfig,
    RunConfig,
    SyncSection,
    _convert,
    _number,
    defaults_yaml,
    dump_config,
    load_config,
    validate,
)
from streamfuse.errors import ConfigError
from streamfuse.security import CurveClient, CurveServer, generate_keys

from ..conftest import examples

SECTIONS = ["mic", "sync", "engine", "http"]


def _refusal(raw: object, tmp_path: Path) -> ConfigError:
    """The error loading ``raw`` (written as ``c.yaml`` in ``tmp_path``) is refused with."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


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


@settings(max_examples=examples(40), deadline=None)
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
        ({"restart_reset_s": 0}, "restart_reset_s"),
        ({"run_dir": "/tmp/" + "x" * 100}, "run_dir"),
    ],
)
def test_bad_values_are_named(raw: dict[str, object], field: str, tmp_path: Path) -> None:
    err = _refusal(raw, tmp_path)
    assert err.field == field and err.file == str(tmp_path / "c.yaml")


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


@settings(max_examples=examples(300), deadline=None)
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
    err = _refusal(raw, tmp_path)
    assert (err.field, err.problem) == (field, problem)
    assert str(err) == f"{field} in {tmp_path / 'c.yaml'}: {problem}"


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


def test_the_shipped_config_file_is_the_defaults_command_output() -> None:
    """README: configs/streamfuse.yaml is `streamfuse config defaults`, byte for byte (every
    comment, range and number format)."""
    shipped = Path(__file__).resolve().parents[2] / "configs" / "streamfuse.yaml"
    assert shipped.read_text() == defaults_yaml()


def test_the_defaults_file_states_each_range_as_the_schema_holds_it() -> None:
    lines = defaults_yaml().splitlines()

    def line(start: str) -> str:
        return next(x for x in lines if x.startswith(start))

    assert line("  rate: 16000 ").endswith("# sample rate, Hz [1000..384_000]")  # ge..le
    assert line("    fps: null ").endswith("decimate (0..1000]")  # gt: an open bound
    assert line("  fps: 10.0 ").endswith("per camera (0..120]")
    assert line("  window_ms: 1000.0 ").endswith("# the model's window [10..10000]")
    assert line("  offsets_ms: {} ").endswith("{video/front: 40}")  # no range
    assert line("    model_version: '' ")  # a nested section, an empty string quoted
    assert line("restart_backoff_s: [0.2, 10.0]").endswith("between them) (0..3600]")
    assert lines.count("") >= 10  # a blank line after each top-level setting


def test_a_dumped_config_is_what_the_children_load() -> None:
    cfg = load_config(None, {"camera": "clip.mp4", "http_port": 0})
    assert msgspec.json.decode(dump_config(cfg), type=RunConfig) == cfg


def test_topics_endpoints_and_clocks_follow_each_sensor(tmp_path: Path) -> None:
    raw = {
        "run_dir": "/run/sf",
        "cameras": [
            {"name": "front"},
            {"name": "side", "topic": "video/left"},
            {"name": "near", "endpoint": "tcp://127.0.0.1:7000"},
            {"name": "far", "endpoint": "tcp://10.0.0.9:7001", "server_key": "k.key"},
            {"name": "pinned", "endpoint": "tcp://10.0.0.9:7002", "server_key": "k.key",
             "clock": "local"},
        ],
        "mic": {"name": "m", "endpoint": "ipc:///tmp/outside-mic"},
    }  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert [t for t, _ in cfg.sensors()] == [
        "video/front", "video/left", "video/near", "video/far", "video/pinned", "audio/m"
    ]  # fmt: skip
    assert cfg.mic_topic == "audio/m" and cfg.camera_topic(cfg.cameras[1]) == "video/left"
    assert cfg.endpoint("video/left") == "ipc:///run/sf/video-left"
    assert cfg.source_endpoint("video/front") == "ipc:///run/sf/video-front"  # started here
    assert cfg.source_endpoint("video/far") == "tcp://10.0.0.9:7001"
    assert cfg.source_endpoint("audio/m") == "ipc:///tmp/outside-mic"
    assert cfg.source_endpoint("video/nobody") == "ipc:///run/sf/video-nobody"
    clocks = {t: cfg.clock_of(t) for t, _ in cfg.sensors()}
    assert clocks == {
        "video/front": "local", "video/left": "local", "video/near": "local",
        "video/far": "wall", "video/pinned": "local", "audio/m": "local",
    }  # fmt: skip
    assert cfg.clock_of("video/nobody") == "local"


@pytest.mark.parametrize(
    ("sensor", "field"),
    [({"cameras": [{"name": "a", "source": "x.mp4", "endpoint": "ipc:///tmp/a"}]}, "cameras[0]"),
     ({"mic": {"source": "pulse", "endpoint": "ipc:///tmp/m"}}, "mic")],
)  # fmt: skip
def test_a_sensor_is_started_or_subscribed_to_not_both(
    sensor: dict[str, object], field: str, tmp_path: Path
) -> None:
    err = _refusal(sensor, tmp_path)
    assert err.field == field
    assert err.problem == ("give a source to start or an endpoint to subscribe to, not both")


def test_a_sensor_with_neither_is_synthetic_and_an_endpoint_alone_starts_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cameras": [{"name": "a", "source": None}],
                                    "mic": {"endpoint": "ipc:///tmp/m"}}))  # fmt: skip
    cfg = load_config(path)
    assert cfg.cameras[0].source == "synthetic"
    assert (cfg.mic.source, cfg.mic.endpoint) == (None, "ipc:///tmp/m")


def test_every_command_line_override_lands_and_is_checked_again() -> None:
    cfg = load_config(
        None,
        {"camera_endpoint": "ipc:///tmp/cam", "mic_endpoint": "tcp://127.0.0.1:7001",
         "output": "tcp://127.0.0.1:7002", "http_port": 0, "foxglove": "8765"},
    )  # fmt: skip
    assert (cfg.cameras[0].source, cfg.cameras[0].endpoint) == (None, "ipc:///tmp/cam")
    assert (cfg.mic.source, cfg.mic.endpoint) == (None, "tcp://127.0.0.1:7001")
    assert cfg.engine.output == "tcp://127.0.0.1:7002" and cfg.http.port == 0
    assert (cfg.foxglove.host, cfg.foxglove.port) == ("127.0.0.1", 8765)
    cfg = load_config(None, {"foxglove": "0.0.0.0:9000", "http_port": None, "camera": None})
    assert (cfg.foxglove.host, cfg.foxglove.port) == ("0.0.0.0", 9000)
    assert cfg.http.port == 9464 and cfg.cameras[0].source == "synthetic"  # None: unchanged
    # an endpoint flag replaces a source from the file, and a source flag an endpoint
    cfg = load_config(None, {"mic": "speech.wav", "mic_endpoint": None})
    assert (cfg.mic.source, cfg.mic.endpoint) == ("speech.wav", None)


@pytest.mark.parametrize(
    ("overrides", "field", "problem"),
    [
        ({"foxglove": "host:"}, "--foxglove", "'host:': give [HOST:]PORT"),
        ({"foxglove": "99999"}, "foxglove.port", "Expected `int` <= 65535"),
        ({"output": "udp://x"}, "engine.output", "Expected `str` matching regex"),
        ({"http_port": -1}, "http.port", "Expected `int` >= 0"),
        ({"camera_endpoint": "tcp://127.0.0.1:0"}, "endpoint",
         "'tcp://127.0.0.1:0': use tcp://HOST:PORT with PORT 1-65535"),
    ],
)  # fmt: skip
def test_a_bad_override_is_held_to_the_files_ranges(
    overrides: dict[str, object], field: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.field == field and info.value.problem.startswith(problem)
    if field != "--foxglove":
        assert info.value.file == "defaults with command-line overrides"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "{path} does not exist"),
        (b"engine: [", "{path} is not valid YAML: while parsing a flow node"),
        (b"42\n", "{path} must hold a mapping of settings"),
        (b"- a\n- b\n", "{path} must hold a mapping of settings"),
        (b"\xff\xfe\x00garbage", "{path} cannot be read: 'utf-8' codec can't decode"),
    ],
)
def test_an_unreadable_file_says_what_is_wrong_with_it(
    content: bytes | None, problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == "--config"
    assert info.value.problem.startswith(problem.format(path=path))
    assert "\n" not in str(info.value)


def test_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("# nothing set\n")
    assert load_config(path) == load_config(None)


@pytest.mark.parametrize(
    ("raw", "field"),
    [({"fpss": 1}, "fpss"), ({"mic": {"rat": 1}}, "mic.rat"),
     ({"cameras": [{"name": "a"}, {"fpss": 1}]}, "cameras[1].fpss")],
)  # fmt: skip
def test_an_unknown_key_is_named_by_its_whole_path(
    raw: dict[str, object], field: str, tmp_path: Path
) -> None:
    err = _refusal(raw, tmp_path)
    assert (err.field, err.problem) == (
        field, "unknown setting (`streamfuse config defaults` lists every setting)"
    )  # fmt: skip


def test_a_config_changed_after_loading_is_checked_under_the_name_given() -> None:
    cfg = load_config(None)
    cfg.run_dir = "/tmp/" + "x" * 120
    with pytest.raises(ConfigError) as info:
        validate(cfg, "the resolved run_dir")
    assert info.value.field == "run_dir" and info.value.file == "the resolved run_dir"
    cfg.run_dir = "/tmp/sf-1"
    assert validate(cfg, "the resolved run_dir").run_dir == "/tmp/sf-1"


def test_a_config_nested_too_deeply_is_one_line_naming_where() -> None:
    """The schema has no recursive type: conversion stops at the first level too deep."""
    deep: dict[str, object] = {}
    for _ in range(5000):
        deep = {"x": deep}
    with pytest.raises(ConfigError) as info:
        _convert({"sync": {"offsets_ms": deep}}, "site.json")
    assert (info.value.field, info.value.problem, info.value.file) == (
        "sync.offsets_ms[...]", "Expected `float`, got `object`", "site.json"
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        _convert([], "site.json")  # not a mapping at all: the config as a whole
    assert (info.value.field, info.value.problem) == ("config", "Expected `object`, got `array`")


def test_yaml_nested_too_deeply_is_refused_by_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.field, info.value.problem) == (
        "--config", f"{path} is nested too deeply to be a config"
    )  # fmt: skip


def test_every_sensor_endpoint_under_run_dir_fits_a_socket_path(tmp_path: Path) -> None:
    """The longest ipc:// path, run_dir + '/' + the topic with '/' as '-', is 107 bytes."""
    name = "n" * 40  # video-<40> is 46 bytes; run_dir of 60 makes 107
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"run_dir": "/" + "r" * 59, "cameras": [{"name": name}]}))
    assert load_config(path).endpoint(f"video/{name}") == f"ipc:///{'r' * 59}/video-{name}"
    path.write_text(yaml.safe_dump({"run_dir": "/" + "r" * 60, "cameras": [{"name": name}]}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == "run_dir"
    assert (
        info.value.problem == f"'ipc:///{'r' * 60}/video-{name}': an ipc path is at most 107 bytes"
    )


def test_a_key_file_without_a_secret_or_unreadable_is_named_by_its_setting(
    tmp_path: Path,
) -> None:
    own_public, _ = generate_keys(tmp_path, "daemon")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"engine": {"output": "tcp://10.1.2.3:5560"},
                                    "security": {"key": str(own_public)}}))  # fmt: skip
    cfg = load_config(path)
    for call in (cfg.curve_server, cfg.curve_clients):
        with pytest.raises(ConfigError) as info:
            call()
        assert (info.value.field, info.value.problem) == (
            "security.key", f"{own_public} holds no secret key (use the .key_secret file)"
        )  # fmt: skip
    camera = {"name": "b", "endpoint": "tcp://10.1.2.4:5555", "server_key": str(tmp_path / "no")}
    path.write_text(yaml.safe_dump({"cameras": [camera]}))
    with pytest.raises(ConfigError) as info:
        load_config(path).curve_clients()
    assert info.value.field == "video/b"  # the sensor whose server_key it is
    assert info.value.problem.startswith(f"{tmp_path / 'no'}: not a readable ZeroMQ key")


def test_two_frames_per_window_reach_the_synchronizer() -> None:
    assert load_config(None).sync_config(k=2).k == 2


def test_large_bounds_are_printed_with_digit_groups() -> None:
    assert [_number(x) for x in (99_999, 100_000, 2.5, 60_000.0)] == [
        "99999", "100_000", "2.5", "60000"
    ]  # fmt: skip


def test_the_daemon_key_makes_engine_output_a_curve_server_beyond_loopback(
    tmp_path: Path,
) -> None:
    own_public, own_secret = generate_keys(tmp_path, "daemon")
    cam_public, _ = generate_keys(tmp_path, "camera")
    raw = {
        "engine": {"output": "tcp://10.1.2.3:5560"},
        "security": {"key": str(own_secret), "authorized_keys": str(tmp_path)},
        "cameras": [
            {"name": "a"},
            {"name": "b", "endpoint": "tcp://10.1.2.4:5555", "server_key": str(cam_public)},
        ],
        "mic": {"endpoint": "tcp://127.0.0.1:5556"},
    }  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    public, secret = zmq.auth.load_certificate(str(own_secret))
    cam_key, _ = zmq.auth.load_certificate(str(cam_public))
    assert public is not None and secret is not None and cam_key is not None
    assert cfg.curve_server() == CurveServer(public, secret, authorized=str(tmp_path))
    clients = cfg.curve_clients()
    assert clients == {
        "tcp://10.1.2.4:5555": CurveClient(cam_key, public, secret),  # its server, our pair
        "tcp://10.1.2.3:5560": CurveClient(public, public, secret),  # our own output
    }  # the loopback mic has no key: plain
    assert own_public.exists()


def test_a_loopback_output_or_no_key_is_plain(tmp_path: Path) -> None:
    _, own_secret = generate_keys(tmp_path, "daemon")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"security": {"key": str(own_secret)}}))
    cfg = load_config(path)  # engine.output is tcp://127.0.0.1:5560
    assert cfg.curve_server() is None and cfg.curve_clients() == {}
    path.write_text(yaml.safe_dump({"engine": {"output": "tcp://10.1.2.3:5560"},
                                    "security": {"insecure": True}}))  # fmt: skip
    cfg = load_config(path)
    assert cfg.curve_server() is None and cfg.curve_clients() == {}
