"""Training: config, dataset/preprocessing, losses, the event-generating Trainer, checkpoints, inference."""
from cryofire_app.training.config import DecoderConfig, EncoderConfig, TrainConfig
from cryofire_app.training.events import (
    Checkpoint,
    Failed,
    Finished,
    Latents,
    Message,
    PhaseChange,
    SeedProgress,
    Started,
    Step,
)
from cryofire_app.training.trainer import Trainer

__all__ = ["Checkpoint", "DecoderConfig", "EncoderConfig", "Failed", "Finished", "Latents", "Message", "PhaseChange",
           "SeedProgress", "Started", "Step", "TrainConfig", "Trainer"]
