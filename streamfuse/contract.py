"""The model contract: what a model takes and gives, stated once, typed, stored in the ONNX file.

One schema for the shipped model, ``streamfuse export`` and any third-party model
(``streamfuse model annotate``). It says what DeepStream's nvinfer config and Triton's model
config let a user say about inputs and outputs: for the image input its layout, colour
order, dtype, size, resize mode and normalisation, and how many frames a sample holds; for
the audio input its rate, length, channels, dtype, and whether the engine feeds raw PCM or
log-mel features it computes itself; which outputs are the fused / image / audio heads, and
whether they are logits or probabilities. Either input may be absent (an audio-only or an
image-only model). ``docs/models.md`` documents every key.

:func:`check_graph` validates a contract against the ONNX graph it is attached to (names,
ranks, static dimensions, dtypes); every error is a :class:`~streamfuse.errors.ConfigError`
whose field is the contract key, e.g. ``contract image.size``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .errors import ConfigError

__all__ = [
    "METADATA_KEY",
    "AudioSpec",
    "Contract",
    "GraphTensor",
    "ImageSpec",
    "LogMel",
    "OutputSpec",
    "check_graph",
    "from_legacy",
    "graph_tensors",
    "load_contract_file",
]

#: The ONNX metadata_props key holding the contract (JSON).
METADATA_KEY = "streamfuse.contract"


class _Spec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Side = Annotated[int, msgspec.Meta(ge=1, le=16384)]
Finite = Annotated[float, msgspec.Meta(ge=-1e6, le=1e6)]
Positive = Annotated[float, msgspec.Meta(gt=0.0, le=1e6)]


class ImageSpec(_Spec):
    """How a camera frame becomes the image input."""

    input: Name
    """The graph input's name."""
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    """Axis order after the batch (and frame) axes."""
    color: Literal["gray", "rgb", "bgr"] = "rgb"
    dtype: Literal["uint8", "float32", "float16"] = "float32"
    size: tuple[Side, Side] | None = None
    """[height, width]; null: read from the graph's static dims."""
    resize: Literal["stretch", "center-crop", "letterbox"] = "stretch"
    """stretch: to size, ignoring aspect; center-crop: the largest centred region of the
    model's aspect, then resize; letterbox: fit inside, pad the rest with ``pad``."""
    pad: Annotated[float, msgspec.Meta(ge=0.0, le=255.0)] = 0.0
    """letterbox: the pixel value (0-255, before normalisation) of the padding."""
    interpolation: Literal["linear", "area", "nearest", "cubic"] = "linear"
    """OpenCV's resize interpolation."""
    scale: Positive | None = None
    """Pixels (0-255) are multiplied by this; null: 1/255 for float inputs, 1 for uint8."""
    mean: Annotated[list[Finite], msgspec.Meta(min_length=1, max_length=3)] = msgspec.field(
        default_factory=lambda: [0.0]
    )
    """Subtracted after scaling: one value, or one per channel in ``color`` order."""
    std: Annotated[list[Positive], msgspec.Meta(min_length=1, max_length=3)] = msgspec.field(
        default_factory=lambda: [1.0]
    )
    """Divided by after the mean."""
    frames: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """K > 1: a temporal model, input [N, K, C, H, W] (or [N, K, H, W, C]), fed the K
    frames the ``k-frames`` sync policy pairs with each window (``sync.k`` must equal K)."""

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    @property
    def effective_scale(self) -> float:
        if self.scale is not None:
            return self.scale
        return 1.0 if self.dtype == "uint8" else 1.0 / 255.0

    def shape(self) -> tuple[int, ...]:
        """One sample's shape (without the batch axis); ``size`` must be known."""
        assert self.size is not None
        h, w = self.size
        c = self.channels
        one = (c, h, w) if self.layout == "NCHW" else (h, w, c)
        return (self.frames, *one) if self.frames > 1 else one


class LogMel(_Spec):
    """Log-mel features computed by the engine, as torchaudio's ``MelSpectrogram`` (then
    ``log``): a periodic window, STFT centred with ``pad_mode`` padding, ``|X|**power``,
    triangular mel filters without area normalisation on the HTK (or Slaney) mel scale."""

    n_fft: Annotated[int, msgspec.Meta(ge=8, le=65536)] = 400
    hop: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 160
    win: Annotated[int, msgspec.Meta(ge=2, le=65536)] | None = None
    """Window length (null: n_fft), zero-padded to n_fft and centred as torch.stft does."""
    window: Literal["hann", "hamming"] = "hann"
    n_mels: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64
    f_min: Annotated[float, msgspec.Meta(ge=0.0, le=192_000.0)] = 0.0
    f_max: Annotated[float, msgspec.Meta(gt=0.0, le=192_000.0)] | None = None
    """null: sample_rate / 2."""
    power: Annotated[float, msgspec.Meta(gt=0.0, le=4.0)] = 2.0
    """1: magnitude, 2: power spectrum."""
    center: bool = True
    pad_mode: Literal["reflect", "constant"] = "reflect"
    mel_scale: Literal["htk", "slaney"] = "htk"
    log: Literal["ln", "db", "none"] = "ln"
    """ln: log(x + offset); db: 10*log10(max(x, offset)) (torchaudio AmplitudeToDB, power);
    none: the mel energies."""
    offset: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 1e-6

    def frames(self, samples: int) -> int:
        if self.center:
            return 1 + samples // self.hop
        return 1 + (samples - self.n_fft) // self.hop


class AudioSpec(_Spec):
    """How an audio window becomes the audio input."""

    input: Name
    sample_rate: Annotated[int, msgspec.Meta(ge=1000, le=384_000)]
    """The engine resamples the microphone's rate to this (soxr)."""
    samples: Annotated[int, msgspec.Meta(ge=1, le=3_840_000)]
    """The window is centred in this many samples (cut or zero-padded)."""
    channels: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    """1: the mean of the microphone's channels; C > 1: its first C channels."""
    dtype: Literal["float32", "float16"] = "float32"
    """PCM is in [-1, 1) whatever the microphone's sample format."""
    features: Literal["pcm", "log-mel"] = "pcm"
    """pcm: input [N, samples] ([N, C, samples] for C > 1); log-mel: [N, n_mels, frames]
    ([N, C, n_mels, frames] where the graph has the channel axis)."""
    log_mel: LogMel | None = None
    """features: log-mel: its parameters (defaults where null)."""

    def mel(self) -> LogMel:
        return self.log_mel or LogMel()


class OutputSpec(_Spec):
    fused: Name
    """The output whose label is the result's ``label``."""
    image: Name | None = None
    """The image head alone (``image_label``; absent: the result's image_* are null)."""
    audio: Name | None = None


class Contract(_Spec):
    labels: Annotated[list[Name], msgspec.Meta(min_length=1, max_length=4096)]
    outputs: OutputSpec
    output_kind: Literal["logits", "probabilities"] = "probabilities"
    """logits: the engine applies softmax."""
    image: ImageSpec | None = None
    audio: AudioSpec | None = None
    name: Name | None = None
    description: Annotated[str, msgspec.Meta(max_length=4096)] | None = None

    def __post_init__(self) -> None:
        if self.image is None and self.audio is None:
            raise ValueError("a model takes an image input, an audio input, or both")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must differ from each other")
        if self.image is not None:
            _check_image(self.image)
        if self.audio is not None:
            _check_audio(self.audio)
        if self.image is None and self.outputs.image is not None:
            raise ValueError("outputs.image names an image head, but there is no image input")
        if self.audio is None and self.outputs.audio is not None:
            raise ValueError("outputs.audio names an audio head, but there is no audio input")

    def to_json(self) -> str:
        return msgspec.json.encode(self).decode()

    def to_builtins(self) -> dict[str, Any]:
        """As JSON would give it back (lists, not tuples; defaults omitted)."""
        out: dict[str, Any] = json.loads(self.to_json())
        return out

    @classmethod
    def parse(cls, raw: Any, where: str = "contract") -> Contract:
        """From builtins (YAML, JSON); one ConfigError naming the key."""
        try:
            return msgspec.convert(raw, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(where, _where(str(exc))) from None

    def output_names(self) -> list[str]:
        o = self.outputs
        return [n for n in (o.fused, o.image, o.audio) if n is not None]


def _where(message: str) -> str:
    """msgspec's ``Expected ... - at `$.image.size[0]``` -> ``image.size[0]: Expected ...``,
    on one line (a hostile key may hold a newline)."""
    text, sep, at = message.rpartition(" - at `$")
    out = f"{at.rstrip('`').lstrip('.')}: {text}" if sep else message
    return " ".join(out.split())


def _check_image(im: ImageSpec) -> None:
    for key in ("mean", "std"):
        values = getattr(im, key)
        if len(values) not in (1, im.channels):
            allowed = "1" if im.channels == 1 else f"1 or {im.channels}"
            raise ValueError(f"image.{key} has {len(values)} values; give {allowed} ({im.color})")
    if im.dtype == "uint8" and (
        im.effective_scale != 1.0 or any(m != 0 for m in im.mean) or any(s != 1 for s in im.std)
    ):
        raise ValueError(
            "image: a uint8 input takes the pixels as they are; scale, mean and std must be "
            "1, 0 and 1 (normalise inside the model)"
        )


def _check_audio(au: AudioSpec) -> None:
    if au.features == "pcm" and au.log_mel is not None:
        raise ValueError("audio.log_mel is given but audio.features is pcm")
    if au.features == "log-mel":
        mel = au.mel()
        win = mel.win or mel.n_fft
        if win > mel.n_fft:
            raise ValueError(f"audio.log_mel.win {win} exceeds n_fft {mel.n_fft}")
        f_max = mel.f_max if mel.f_max is not None else au.sample_rate / 2
        if not mel.f_min < f_max <= au.sample_rate / 2:
            raise ValueError(
                f"audio.log_mel: need f_min < f_max <= sample_rate/2 ({au.sample_rate / 2:g}),"
                f" got {mel.f_min:g} and {f_max:g}"
            )
        if not mel.center and au.samples < mel.n_fft:
            raise ValueError(f"audio.samples {au.samples} < n_fft {mel.n_fft} without center")
        if mel.center and mel.pad_mode == "reflect" and au.samples <= mel.n_fft // 2:
            raise ValueError(
                f"audio.samples {au.samples} too short to reflect-pad n_fft // 2 = {mel.n_fft // 2}"
            )


def load_contract_file(path: str | Path) -> Contract:
    """A contract YAML (or JSON) file; ``labels_file`` (one label per line, relative to the
    file) is read into ``labels``."""
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError("contract", f"{p}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("contract", f"{p} is not YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError("contract", f"{p} must be a mapping of keys, got {type(raw).__name__}")
    if "labels_file" in raw:
        if "labels" in raw:
            raise ConfigError("contract labels_file", "give labels or labels_file, not both")
        lp = p.parent / str(raw.pop("labels_file"))
        try:
            raw["labels"] = [ln.strip() for ln in lp.read_text().splitlines() if ln.strip()]
        except OSError as exc:
            raise ConfigError("contract labels_file", f"{lp}: {exc.strerror or exc}") from None
    return Contract.parse(raw)  # (its own checks' ValueErrors arrive as ConfigError too)


def from_legacy(meta: dict[str, Any]) -> Contract:
    """The contract of a model exported before ``streamfuse.contract`` existed (keys
    ``streamfuse.image`` / ``audio`` / ``labels`` / ``outputs``: gray, centre square crop,
    area resize, float in ``range``; PCM; three probability outputs fused, image, audio)."""
    image, audio, outputs = meta["image"], meta["audio"], list(meta["outputs"])
    c, h, w = image["shape"]
    lo, hi = image.get("range", [0.0, 1.0])
    if c != 1 or image.get("color") != "gray":
        raise ConfigError("model", "legacy metadata describes only grayscale image models")
    return Contract(
        labels=list(meta["labels"]),
        outputs=OutputSpec(
            fused=outputs[0],
            image=outputs[1] if len(outputs) > 1 else None,
            audio=outputs[2] if len(outputs) > 2 else None,
        ),
        image=ImageSpec(
            input=image["input"],
            layout="NCHW",
            color="gray",
            size=(int(h), int(w)),
            resize="center-crop",
            interpolation="area",
            scale=(hi - lo) / 255.0,
            mean=[float(-lo)] if lo else [0.0],
        ),
        audio=AudioSpec(
            input=audio["input"],
            sample_rate=int(audio["sample_rate"]),
            samples=int(audio["samples"]),
            channels=int(audio.get("channels", 1)),
        ),
    )


# --- the graph ------------------------------------------------------------------------

_ONNX_DTYPES = {1: "float32", 2: "uint8", 10: "float16", 11: "float64", 7: "int64", 6: "int32"}


class GraphTensor(msgspec.Struct, frozen=True):
    name: str
    dtype: str
    shape: tuple[int | str, ...]
    """Static dims as ints, symbolic ones by name ("?" when unnamed)."""


def graph_tensors(proto: Any) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """(inputs, outputs) of an ONNX ModelProto; initializers are not inputs."""
    inits = {t.name for t in proto.graph.initializer}

    def tensor(v: Any) -> GraphTensor:
        tt = v.type.tensor_type
        dims: list[int | str] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or "?")
        return GraphTensor(
            v.name, _ONNX_DTYPES.get(tt.elem_type, f"onnx:{tt.elem_type}"), tuple(dims)
        )

    ins = [tensor(v) for v in proto.graph.input if v.name not in inits]
    return ins, [tensor(v) for v in proto.graph.output]


def _static(d: int | str) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def check_graph(contract: Contract, proto: Any) -> Contract:
    """Validate ``contract`` against the graph; returns it with ``image.size`` filled from
    static dims where it was null. Raises ConfigError(``contract <key>``, ...)."""
    ins, outs = graph_tensors(proto)
    by_in = {t.name: t for t in ins}
    by_out = {t.name: t for t in outs}
    fed = []
    if contract.image is not None:
        contract = msgspec.structs.replace(
            contract, image=_check_image_input(contract.image, by_in)
        )
        fed.append(contract.image.input)  # type: ignore[union-attr]
    if contract.audio is not None:
        _check_audio_input(contract.audio, by_in)
        fed.append(contract.audio.input)
    unfed = [t.name for t in ins if t.name not in fed]
    if unfed:
        raise ConfigError("contract", f"the graph has inputs no contract key feeds: {unfed}")
    for role in ("fused", "image", "audio"):
        name = getattr(contract.outputs, role)
        if name is None:
            continue
        key = f"contract outputs.{role}"
        if name not in by_out:
            raise ConfigError(key, f"{name!r} is not a graph output (outputs: {list(by_out)})")
        t = by_out[name]
        if len(t.shape) != 2:
            raise ConfigError(key, f"{name!r} has shape {list(t.shape)}; want [batch, labels]")
        if t.dtype not in ("float32", "float16", "float64"):
            raise ConfigError(key, f"{name!r} is {t.dtype}; want a float tensor")
        n = _static(t.shape[1])
        if n is not None and n != len(contract.labels):
            raise ConfigError(
                "contract labels", f"{len(contract.labels)} labels but {name!r} has {n} classes"
            )
    return contract


def _batch_ok(key: str, t: GraphTensor) -> None:
    if _static(t.shape[0]) not in (None, 1):
        raise ConfigError(key, f"{t.name!r} has a fixed batch of {t.shape[0]}; want dynamic or 1")


def _want(key: str, what: str, got: int | str, want: int) -> None:
    if _static(got) is not None and got != want:
        raise ConfigError(key, f"{what} is {want} here but {got} in the graph")


def _check_image_input(im: ImageSpec, by_in: dict[str, GraphTensor]) -> ImageSpec:
    if im.input not in by_in:
        raise ConfigError(
            "contract image.input", f"{im.input!r} is not a graph input (inputs: {list(by_in)})"
        )
    t = by_in[im.input]
    rank = 4 if im.frames == 1 else 5
    if len(t.shape) != rank:
        what = "[N, C, H, W]" if im.layout == "NCHW" else "[N, H, W, C]"
        if im.frames > 1:
            what = what.replace("N, ", "N, K, ")
        raise ConfigError(
            "contract image.layout", f"{im.input!r} has shape {list(t.shape)}; want {what}"
        )
    if t.dtype != im.dtype:
        raise ConfigError("contract image.dtype", f"{im.dtype} here but {t.dtype} in the graph")
    _batch_ok("contract image.input", t)
    dims = t.shape[1:]
    if im.frames > 1:
        _want("contract image.frames", "K", dims[0], im.frames)
        dims = dims[1:]
    c, h, w = (dims[0], dims[1], dims[2]) if im.layout == "NCHW" else (dims[2], dims[0], dims[1])
    _want("contract image.color", f"channels ({im.color})", c, im.channels)
    if im.size is None:
        sh, sw = _static(h), _static(w)
        if sh is None or sw is None:
            raise ConfigError("contract image.size", "the graph's H and W are dynamic: give size")
        return msgspec.structs.replace(im, size=(sh, sw))
    _want("contract image.size", "height", h, im.size[0])
    _want("contract image.size", "width", w, im.size[1])
    return im


def _check_audio_input(au: AudioSpec, by_in: dict[str, GraphTensor]) -> None:
    if au.input not in by_in:
        raise ConfigError(
            "contract audio.input", f"{au.input!r} is not a graph input (inputs: {list(by_in)})"
        )
    t = by_in[au.input]
    if t.dtype != au.dtype:
        raise ConfigError("contract audio.dtype", f"{au.dtype} here but {t.dtype} in the graph")
    _batch_ok("contract audio.input", t)
    dims = t.shape[1:]
    if au.features == "pcm":
        want = [au.channels, au.samples] if au.channels > 1 else [au.samples]
        if len(dims) != len(want):
            shape = ", ".join(map(str, want))
            raise ConfigError(
                "contract audio.features",
                f"pcm of {au.channels} channel(s) is [N, {shape}]; the graph has {list(t.shape)}",
            )
        if au.channels > 1:
            _want("contract audio.channels", "channels", dims[0], au.channels)
        _want("contract audio.samples", "samples", dims[-1], au.samples)
        return
    mel = au.mel()
    if len(dims) == 3:
        _want("contract audio.channels", "channels", dims[0], au.channels)
        dims = dims[1:]
    elif len(dims) != 2 or au.channels > 1:
        raise ConfigError(
            "contract audio.features",
            f"log-mel is [N, n_mels, frames] or [N, C, n_mels, frames]; the graph has "
            f"{list(t.shape)}",
        )
    _want("contract audio.log_mel.n_mels", "n_mels", dims[0], mel.n_mels)
    _want("contract audio.samples", "frames (from samples, hop)", dims[1], mel.frames(au.samples))


def _proto(path: Path) -> Any:
    import onnx

    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise ConfigError("model", f"{path} is not a readable ONNX model: {exc}") from None
    if not proto.graph.node:
        raise ConfigError("model", f"{path} is not a readable ONNX model: it has no graph")
    return proto


def annotate(model: Path, contract: Contract, out: Path) -> Contract:
    """Write ``out``: ``model`` with ``contract`` (checked against its graph, ``size``
    filled in from it) as its ``streamfuse.contract`` metadata; older streamfuse keys of
    the contract's (labels, image, audio, outputs) are removed. Atomic."""
    import os

    import onnx

    proto = _proto(model)
    checked = check_graph(contract, proto)
    legacy = {f"streamfuse.{k}" for k in ("labels", "image", "audio", "outputs")}
    keep = [e for e in proto.metadata_props if e.key not in legacy | {METADATA_KEY}]
    del proto.metadata_props[:]
    for e in keep:
        proto.metadata_props.add(key=e.key, value=e.value)
    proto.metadata_props.add(key=METADATA_KEY, value=checked.to_json())
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError("--out", f"{out}: {exc.strerror or exc}") from None
    return checked


def inspect(path: Path | None) -> dict[str, Any]:
    """The contract, the graph's tensors, and whether they agree (``problem`` if not)."""
    import hashlib

    from .backend import ModelInfo, default_model_path

    p = path or default_model_path()
    proto = _proto(p)
    ins, outs = graph_tensors(proto)
    report: dict[str, Any] = {
        "path": str(p),
        "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        "graph": {
            "inputs": [msgspec.to_builtins(t) for t in ins],
            "outputs": [msgspec.to_builtins(t) for t in outs],
        },
        "contract": None,
        "agrees": False,
        "problem": None,
    }
    try:
        info = ModelInfo.load(p)
    except ConfigError as err:
        report["problem"] = str(err)
        raw = {e.key: e.value for e in proto.metadata_props}.get(METADATA_KEY)
        if raw is not None:
            with contextlib.suppress(json.JSONDecodeError):
                report["contract"] = json.loads(raw)
        return report
    report["contract"] = info.contract.to_builtins()
    report["agrees"] = True
    report["input_shapes"] = {k: list(v) for k, v in info.input_shapes.items()}
    return report
