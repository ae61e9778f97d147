"""Parallelism applied from outside the model: mesh, data/sequence parallel, sharding, memory."""
