"""Live microphones through PortAudio (the ``sounddevice`` package).

Window times come from PortAudio's ADC time of each input block, mapped onto
CLOCK_MONOTONIC at the moment of the callback: ``t = monotonic_now - (currentTime -
inputBufferAdcTime)``. Only a difference of PortAudio times is used, so the mapping does not
depend on what clock PortAudio's stream time is on.
"""

from __future__ import annotations

import queue
import time
from typing import Any

import numpy as np

from streamfuse.capture import AudioOptions, SourceBase
from streamfuse.errors import DeviceNotFound, SourceError
from streamfuse.messages import AudioWindow

from ._common import AudioWindows

NS = 1_000_000_000


def import_sounddevice() -> Any:
    """Import sounddevice, turning a missing PortAudio into a clear error."""
    try:
        import sounddevice as sd
    except OSError as exc:
        raise SourceError(
            "sounddevice", f"the PortAudio library is missing ({exc}); install libportaudio2"
        ) from None
    return sd


def list_microphones() -> list[str]:
    """Input devices PortAudio sees, as ``index: name (N in, default rate)``."""
    sd = import_sounddevice()
    return [
        f"{i}: {d['name']} ({d['max_input_channels']} in, {d['default_samplerate']:g} Hz)"
        for i, d in enumerate(sd.query_devices())
        if d["max_input_channels"] > 0
    ]


class Microphone(SourceBase):
    """``--source pulse``, ``--source 3``, ``--source "USB Audio"``: a PortAudio input."""

    block_s = 0.01

    def __init__(self, arg: str, opts: AudioOptions) -> None:
        super().__init__()
        sd = import_sounddevice()
        self.opts = opts
        device: int | str = int(arg) if arg.isdigit() else arg
        try:
            info = sd.query_devices(device, "input")
        except ValueError:
            raise DeviceNotFound("microphone", arg, list_microphones()) from None
        self.description = f"microphone {info['name']}"
        self._q: queue.SimpleQueue[tuple[np.ndarray, int, int, bool]] = queue.SimpleQueue()
        self._windows = AudioWindows(opts)
        try:
            self._stream = sd.InputStream(
                device=device,
                channels=opts.channels,
                samplerate=opts.rate,
                dtype="float32",
                blocksize=max(1, round(opts.rate * self.block_s)),
                callback=self._callback,
            )
            self._stream.start()
        except sd.PortAudioError as exc:
            raise SourceError(self.description, f"cannot open for input: {exc}") from None

    def _callback(self, indata: np.ndarray, frames: int, t: Any, status: Any) -> None:
        now = time.monotonic_ns()
        if t.inputBufferAdcTime > 0 and t.currentTime > 0:
            t_first = now - round((t.currentTime - t.inputBufferAdcTime) * NS)
        else:  # host API without ADC times: the block ended about now
            t_first = now - frames * NS // self.opts.rate
        self._q.put((indata.copy(), t_first, now, bool(status.input_overflow)))

    def read(self) -> list[tuple[AudioWindow, object]] | None:
        out: list[tuple[AudioWindow, object]] = []
        try:
            item = self._q.get(timeout=0.1)
        except queue.Empty:
            if not self._stream.active:
                self.fail("stream_stopped", f"{self.description} stopped delivering audio")
                return None
            return out
        while True:
            block, t_first, t_delivered, overflow = item
            if overflow:
                self.drops["input_overflow"] += 1
            out.extend(self._windows.push(block, t_first, t_delivered))
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
        for key, n in self._windows.windower.counters.items():
            self.errors[key] = n
        return out

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()
