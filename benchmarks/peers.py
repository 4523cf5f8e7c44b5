"""The same-host transports a robotics team would pick instead of streamfuse's, each driven
as its own documentation and examples say, with lossless settings (the sender waits for a
slow reader; nothing is overwritten), for benchmarks/transport.py.

- iceoryx2 (PyPI ``iceoryx2``): a publish-subscribe service of ``Slice[c_uint8]``; the sender
  fills a loaned sample in place (``loan_slice_uninit``) and wakes the reader through an event
  service; the reader waits in a ``WaitSet`` and reads each sample in place (a NumPy view of
  the payload, no copy), as examples/python/event_based_communication does.
- eCAL 6 (PyPI ``eclipse-ecal``): ``Publisher.send(bytes)`` over its shared-memory layer only
  (UDP and TCP layers off, registration through shared memory: nothing leaves the box), with
  zero-copy mode on and the acknowledge handshake (the sender waits for the reader); the
  Python API takes and hands over ``bytes``, so a copy each way is part of its cost.
- Zenoh (PyPI ``eclipse-zenoh``): peer sessions on tcp/127.0.0.1 with multicast scouting
  off and shared memory on; the sender allocates from a ``ShmProvider`` and puts the buffer
  (``CongestionControl.BLOCK``, reliable); the reader's ``payload.to_bytes()`` is the Python
  API's only way to the bytes (a copy).

Every sender takes its capture time after the frame is in place, as streamfuse's ``loan``
mode does; latency is the receiver's CLOCK_MONOTONIC minus it.
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing as mp
import threading
import time
from typing import Any

import numpy as np

_T = ctypes.c_uint64  # capture time, in front of the pixels (iceoryx2)
HEAD = ctypes.sizeof(_T)
DEPTH = 8  # samples in flight before the sender waits (streamfuse's HWM and ring size)


def pace(i: int, start: int, rate: float | None) -> None:
    """Sleep until frame ``i`` is due at ``rate`` per second from ``start`` (None: at once)."""
    if rate:
        delay = start + i * 1e9 / rate - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)


def frame(shape: tuple[int, ...]) -> np.ndarray:
    """The frame every sender sends: random pixels, the same each run."""
    return np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)


class _Arrivals:
    """Latencies as frames arrive (from a callback on a library's own thread, or a loop),
    until ``n`` came or, in :meth:`wait`, ten seconds passed with nothing new (the rest
    counts as lost)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lat: list[int] = []
        self.times: list[int] = []
        self.done = threading.Event()

    def add(self, now: int, sent: int) -> None:
        self.lat.append(now - sent)
        self.times.append(now)
        if len(self.lat) >= self.n:
            self.done.set()

    def wait(self) -> None:
        last = -1
        while not self.done.wait(10) and len(self.lat) != last:
            last = len(self.lat)

    def span(self) -> float:
        return (self.times[-1] - self.times[0]) / 1e9 if len(self.times) > 1 else 0.0


# -- iceoryx2 ------------------------------------------------------------------------------


def _iox_service(name: str) -> tuple[Any, Any, Any]:
    import iceoryx2 as iox2

    iox2.set_log_level(iox2.LogLevel.Error)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    svc = (
        node.service_builder(iox2.ServiceName.new(name))
        .publish_subscribe(iox2.Slice[ctypes.c_uint8])
        .enable_safe_overflow(False)  # lossless: a full reader buffer blocks the sender
        .subscriber_max_buffer_size(DEPTH)
        .subscriber_max_borrowed_samples(2)
        .open_or_create()
    )
    event = node.service_builder(iox2.ServiceName.new(name + "/ready")).event().open_or_create()
    return node, svc, event


def iox_send(ep: str, shape: tuple[int, ...], n: int, rate: float | None) -> None:
    import iceoryx2 as iox2

    img = frame(shape)
    nbytes = img.nbytes
    _node, svc, event = _iox_service(ep)  # (the node lives as long as its ports)
    pub = (
        svc.publisher_builder()
        .initial_max_slice_len(HEAD + nbytes)
        .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
        .create()
    )
    notifier = event.notifier_builder().create()
    deadline = time.monotonic() + 10
    while svc.dynamic_config.number_of_subscribers == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    pub.update_connections()
    start = time.monotonic_ns()
    for i in range(n):
        pace(i, start, rate)
        sample = pub.loan_slice_uninit(HEAD + nbytes)
        ptr = sample.payload().as_ptr()
        view = np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr + HEAD), np.uint8)
        view[...] = img.reshape(-1)  # the sensor's readout, into the loaned sample
        _T.from_address(ptr).value = time.monotonic_ns()
        sample.assume_init().send()
        notifier.notify()
    time.sleep(0.5)  # (the reader borrows the last samples; leaving would take them away)


def iox_recv(ep: str, n: int) -> tuple[list[int], float]:
    import iceoryx2 as iox2

    _node, svc, event = _iox_service(ep)
    sub = svc.subscriber_builder().buffer_size(DEPTH).create()
    listener = event.listener_builder().create()
    waitset = iox2.WaitSetBuilder.new().create(iox2.ServiceType.Ipc)
    guard = waitset.attach_notification(listener)
    got = _Arrivals(n)
    timeout = iox2.Duration.from_secs(10)
    while not got.done.is_set():
        events, _ = waitset.wait_and_process_with_timeout(timeout)
        if not events:
            break
        for attachment in events:
            if attachment.has_event_from(guard):
                listener.try_wait()  # (consume the wake-ups)
        while (sample := sub.receive()) is not None:
            now = time.monotonic_ns()
            payload = sample.payload()
            ptr, size = payload.as_ptr(), payload.len()
            # what an application does: a (H, W, 3) view of the pixels, in place
            np.frombuffer((ctypes.c_uint8 * (size - HEAD)).from_address(ptr + HEAD), np.uint8)
            got.add(now, _T.from_address(ptr).value)
            sample.delete()
    return got.lat, got.span()


# -- eCAL ------------------------------------------------------------------------------------


def _ecal_init(name: str) -> Any:
    import ecal.nanobind_core as ecal

    cfg = ecal.Configuration()
    cfg.registration.local.transport_type = ecal.LocalTransportType.SHM  # no UDP at all
    cfg.publisher.layer.udp.enable = False
    cfg.publisher.layer.tcp.enable = False
    cfg.publisher.layer.shm.enable = True
    cfg.publisher.layer.shm.zero_copy_mode = True
    cfg.publisher.layer.shm.acknowledge_timeout_ms = 5000  # lossless: wait for the reader
    cfg.publisher.layer.shm.memfile_buffer_count = 1
    cfg.subscriber.layer.udp.enable = False
    cfg.subscriber.layer.tcp.enable = False
    cfg.subscriber.layer.shm.enable = True
    cfg.registration.registration_refresh = 100
    ecal.initialize(cfg, name)
    return ecal


def ecal_send(ep: str, shape: tuple[int, ...], n: int, rate: float | None) -> None:
    ecal = _ecal_init("sf-bench-send")
    img = frame(shape)
    # (the constructor's default is a default configuration, not the one initialized)
    pub = ecal.Publisher(ep, ecal.DataTypeInformation(), ecal.get_publisher_configuration())
    deadline = time.monotonic() + 15
    while pub.get_subscriber_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # (a subscriber is registered before its shared-memory reader is up)
    start = time.monotonic_ns()
    for i in range(n):
        pace(i, start, rate)
        pub.send(img.tobytes(), time.monotonic_ns() // 1000)  # (its Python API sends bytes)
    time.sleep(0.5)
    ecal.finalize()


def ecal_recv(ep: str, n: int) -> tuple[list[int], float]:
    """In a process of its own: eCAL initialized and finalized over and over in one process
    (the benchmark's parent) once failed to open its shared memory (``shm_open: Invalid
    argument``) and received nothing."""
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_ecal_recv_main, args=(ep, n, theirs))
    proc.start()
    theirs.close()
    got: tuple[list[int], float] = mine.recv() if mine.poll(120) else ([], 0.0)
    proc.join(10)
    return got


def _ecal_recv_main(ep: str, n: int, out: Any) -> None:
    out.send(_ecal_recv(ep, n))


def _ecal_recv(ep: str, n: int) -> tuple[list[int], float]:
    ecal = _ecal_init("sf-bench-recv")
    got = _Arrivals(n)

    def on_data(_pub: object, _type: object, data: Any) -> None:  # (on eCAL's thread)
        now = time.monotonic_ns()
        np.frombuffer(data.buffer, np.uint8)  # the pixels
        # (microseconds: the one-microsecond resolution of eCAL's send time costs < 1 us)
        got.add(now, data.send_timestamp * 1000)

    sub = ecal.Subscriber(ep, ecal.DataTypeInformation(), ecal.get_subscriber_configuration())
    sub.set_receive_callback(on_data)
    got.wait()
    sub.remove_receive_callback()
    ecal.finalize()
    return got.lat, got.span()


# -- Zenoh -------------------------------------------------------------------------------------


def _zenoh(port: int, listen: bool) -> Any:
    import zenoh

    conf: dict[str, Any] = {
        "mode": "peer",
        "scouting": {"multicast": {"enabled": False}, "gossip": {"enabled": False}},
        "transport": {"shared_memory": {"enabled": True}},
    }
    key = "listen" if listen else "connect"
    conf[key] = {"endpoints": [f"tcp/127.0.0.1:{port}"]}
    return zenoh.open(zenoh.Config.from_json5(json.dumps(conf)))


def zenoh_send(ep: str, shape: tuple[int, ...], n: int, rate: float | None) -> None:
    import zenoh
    from zenoh import shm

    img = frame(shape)
    port = int(ep.rsplit(":", 1)[1])
    session = _zenoh(port, listen=True)
    pub = session.declare_publisher(
        "sf/bench",
        congestion_control=zenoh.CongestionControl.BLOCK,
        reliability=zenoh.Reliability.RELIABLE,
    )
    provider = shm.ShmProvider.default_backend(max(64 << 20, 4 * DEPTH * img.nbytes))
    policy = shm.BlockOn(shm.GarbageCollect())
    deadline = time.monotonic() + 15
    while not pub.matching_status.matching and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    start = time.monotonic_ns()
    for i in range(n):
        pace(i, start, rate)
        buf = provider.alloc(img.nbytes, policy)
        buf[:] = img.tobytes()  # the readout, into the buffer (its API takes bytes)
        pub.put(buf, attachment=time.monotonic_ns().to_bytes(8, "little"))
    time.sleep(0.5)
    session.close()


def zenoh_recv(ep: str, n: int) -> tuple[list[int], float]:
    port = int(ep.rsplit(":", 1)[1])
    deadline = time.monotonic() + 10
    while True:  # the sender's session listens: connect once it is up
        try:
            session = _zenoh(port, listen=False)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    got = _Arrivals(n)

    def on_sample(sample: Any) -> None:  # (on Zenoh's thread, as its examples do)
        now = time.monotonic_ns()
        np.frombuffer(sample.payload.to_bytes(), np.uint8)  # the pixels
        got.add(now, int.from_bytes(sample.attachment.to_bytes(), "little"))

    sub = session.declare_subscriber("sf/bench", on_sample)
    got.wait()
    sub.undeclare()
    session.close()
    return got.lat, got.span()
