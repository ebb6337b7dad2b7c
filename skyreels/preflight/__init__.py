"""`skyreels preflight`: the real code on fake CUDA at full size, before anyone rents a GPU.

It finds the errors CUDA would raise (a tensor left on the host, a collective of the wrong shape) and counts what
each GPU and host would hold, for `skyreels generate`'s flags (here) or for a Serve config (serve_app.preflight).
"""
