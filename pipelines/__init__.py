"""lakehouse-dl: raw tables → bronze → silver → gold Delta tables → tensors → Horovod training → results."""
__version__ = "0.1.0"
