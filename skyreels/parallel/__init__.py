"""The DiT gang: process groups (created here only), the CFG x Ulysses mesh, the joint attention (one device
or Ulysses-sharded), the CFG split, parallel VAE decode and the local gang of spawned processes."""
