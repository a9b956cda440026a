"""deepfeat: relate the deep features of audio CNNs to hand-crafted signal-processing features."""

__version__ = "0.1.0"
