"""The DiT gang above the low-level parallel pieces: the Ray-free rank (`GangRank`) that every gang process
runs, the commands a driver sends it, and the local driver of spawned processes. Serve's worker actors
(`deployments.denoiser`) wrap the same rank."""
