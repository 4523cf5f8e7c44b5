"""A robot app: stop when the camera and the microphone agree they see and hear a "0".

streamfuse run &                # or `streamfuse demo` in another terminal
python examples/robot_app.py [--endpoint tcp://127.0.0.1:5560] [--label 0] [--count N]
"""

from __future__ import annotations

import argparse

from streamfuse import Client


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:5560")
    ap.add_argument("--label", default="0", help="The label that makes the robot stop.")
    ap.add_argument("--min-score", type=float, default=0.9)
    ap.add_argument("--count", type=int, default=None, help="Exit after this many results.")
    args = ap.parse_args()

    seen = 0
    with Client(args.endpoint) as client:
        for result in client:
            seen += 1
            agree = result.image_label == result.audio_label == result.label
            if result.label == args.label and result.score >= args.min_score and agree:
                print(f"STOP: saw and heard {result.label!r} ({result.score:.2f})", flush=True)
            elif result.degraded:
                print(f"careful: running on {', '.join(result.missing)} missing", flush=True)
            else:
                print(f"{result.stream}: {result.label} ({result.score:.2f})", flush=True)
            if args.count is not None and seen >= args.count:
                break
    if client.missed:
        print(f"(missed {client.missed} results)")


if __name__ == "__main__":
    main()
