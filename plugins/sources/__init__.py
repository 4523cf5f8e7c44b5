"""Sensor sources: cameras (OpenCV), microphones (sounddevice), files and synthetic."""
