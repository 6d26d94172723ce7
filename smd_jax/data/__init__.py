"""Data: the TFDS HyperSim data set on disk (`datasets`) and batches from it (`batching`)."""
