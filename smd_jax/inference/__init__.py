"""Inference: a trained run back from its workdir (`trained_run`), depth for photos
(`predict_lib`, the predict command's library)."""
