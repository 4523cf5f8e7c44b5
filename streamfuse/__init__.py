"""streamfuse: camera + microphone -> synchronized image+audio fusion inference over ZeroMQ.

The core package imports no camera, audio or deep-learning library; those live in
``streamfuse_plugins`` and load when a source, model or backend is asked for.
"""

import os as _os

# ONNX Runtime >= 1.29 sends usage telemetry from Linux by default (and leaves a ``.ses``
# file in $TMPDIR). An edge daemon talks to no one it was not told to: off unless the user
# set the variable (ORT_DISABLE_TELEMETRY=0 allows it). Read when ONNX Runtime loads.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .capture import AudioOptions, VideoOptions, open_source, run_capture
from .client import Client
from .errors import (
    ConfigError,
    DecodeError,
    DeviceNotFound,
    EndpointError,
    SourceError,
    StreamfuseError,
)
from .messages import (
    PROTOCOL_VERSION,
    AudioWindow,
    Classification,
    Envelope,
    Heartbeat,
    Message,
    VideoFrame,
    audio_array,
    decode,
    encode,
    image_array,
)
from .transport import Publisher, Subscriber

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "AudioOptions",
    "AudioWindow",
    "Classification",
    "Client",
    "ConfigError",
    "DecodeError",
    "DeviceNotFound",
    "EndpointError",
    "Envelope",
    "Heartbeat",
    "Message",
    "Publisher",
    "SourceError",
    "StreamfuseError",
    "Subscriber",
    "VideoFrame",
    "VideoOptions",
    "__version__",
    "audio_array",
    "decode",
    "encode",
    "image_array",
    "open_source",
    "run_capture",
]
