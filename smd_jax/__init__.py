"""smd-jax: Semantic-MD monocular depth with semantic signals, in JAX/Flax.

Commands (`python -m smd_jax.<name>`): train, evaluate, predict, experiments, convert.
Libraries by stage: data/, models/, training/, evaluation/, inference/, convert/; the
shared maths in semantics, tasks, losses, metrics; the paper's numbers in paper.
"""
