"""peftlab: run and compare parameter-efficient fine-tuning methods in one training loop."""

__version__ = "0.1.0"
