"""imgfit-batch: train a coordinate network to recreate an image and film it learning."""

__version__ = "0.1.0"
