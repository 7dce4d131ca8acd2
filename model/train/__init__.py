"""Training: procedural toy data, VQ-VAE and progressive VARiant supernet trainers.

Submodules are imported explicitly (``from model.train.toy_data import ToyDataset``) so this package stays light.
"""
