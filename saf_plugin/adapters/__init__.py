"""Adapters: what saf-plugin knows about torch.nn, SpikingJelly and snnTorch module classes."""
