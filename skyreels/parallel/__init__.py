"""Process groups for the DiT gang (the only place that creates them)."""
