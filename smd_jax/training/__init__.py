"""Training: the jitted steps (`steps`), the loop (`trainer`), checkpoints, the device mesh
(`data_parallel`), several hosts and preemption (`multihost`), the metric writer, and
sweeps over configs (`sweep`)."""
