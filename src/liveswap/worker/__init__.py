"""The Python worker process of ``liveswap run``: its main (``main``) and its end of the channel
to the supervisor (``channel``, which the supervisor uses too)."""
