"""ser: a reproducible speech-emotion-recognition research pipeline."""
__version__ = "0.1.0"
