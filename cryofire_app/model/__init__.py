"""Encoder, implicit Hartley decoder and the full cryoFIRE model (torch.nn)."""
from cryofire_app.model.cryofire import CryoFIRE, MaskPoints, compensate_mirror, mask_points, mirror_images
from cryofire_app.model.decoder import HartleyDecoder
from cryofire_app.model.encoder import Encoder

__all__ = ["CryoFIRE", "Encoder", "HartleyDecoder", "MaskPoints", "compensate_mirror", "mask_points",
           "mirror_images"]
