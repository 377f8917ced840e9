"""The serving layer shared by ``liveswap.serve()`` and ``liveswap run``'s workers: uvicorn's
protocols with our guards and drain (``protocol``), the lifecycle split into the steps a reload
needs (``server``), the lifespan protocol (``lifespan``) and app loading (``app``)."""
