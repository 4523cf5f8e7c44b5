"""Demo sessions: a video of digits and a wav of the same digits spoken, one per second."""
