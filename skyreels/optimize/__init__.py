"""Speed and memory options: quantisation, offload, compile, attention backends, step caching."""

from skyreels.optimize.config import OptimizeConfig

__all__ = ["OptimizeConfig"]
