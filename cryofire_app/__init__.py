"""cryofire_app: amortized ab initio heterogeneous cryo-EM reconstruction.

Layers (one direction of dependency):
    io, physics, model, training, analysis   -- the engine: numpy/torch only, never Qt
    cli                                       -- headless front end
    gui                                       -- napari plugin (Qt); calls the engine, never re-implements it
"""

__version__ = "0.1.0"
