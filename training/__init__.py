"""Training concerns called by pretrain_jax.py: config, optimizers, state, steps, checkpoints."""
