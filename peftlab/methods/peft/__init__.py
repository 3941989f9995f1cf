"""The peft method (``method.py``): huggingface peft's tuners as a peftlab method, registered on import."""
