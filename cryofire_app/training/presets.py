"""Training presets: the seeded settings of `cryofire demo` and `cryofire gui --demo` (one place for both; why each
value: docs/decisions/009-demo-settings.md)."""
from __future__ import annotations


def demo_overrides(n: int, box: int, seed: int = 0, num_images: int | None = None) -> dict:
    """TrainConfig fields of the seeded schedule at demo size (shared by `cryofire demo` and `cryofire gui --demo`).

    Sized to finish in minutes on a CPU: a light seed (two starts, 12 rounds on <= 2000 particles at box 16, local
    refinement up to the demo box), a narrow CNN reading the whole image (with these narrow channels the 32-px crop
    loses the state split), a 3x128 decoder at radius <= 12 px, and 40 passes over the particles, most of them
    distilling. No synthetic distill images and no view encoder: they serve new particles, and would push the demo
    past its time cap. Why each: docs/decisions/009-demo-settings.md.
    """
    from cryofire_app.training.config import DecoderConfig, EncoderConfig

    budget = 40 * int(n) if num_images is None else int(min(num_images, 40 * int(n)))
    return dict(
        schedule="seeded",
        seed_config=dict(box_global=16, radius_global=[4.0, 5.0], n_subset=2000, n_restarts=2, iters_global=12,
                         max_shift_px=2.0, box_search=16, iters_search=2,
                         boxes_local=sorted({min(b, box) for b in (16, 24, box)}), iters_local=1,
                         box_hetero=min(32, box), seed=int(seed)),
        encoder=EncoderConfig(channels=(8, 16, 32, 64), hidden=256, box=None, view_dirs=0),
        decoder=DecoderConfig(hidden=128),
        freq_max=min(12, box // 2), lr=1e-3, distill_fraction=0.85, distill_synth_ratio=0.0,
        num_images=budget, checkpoint_every=max(1000, budget // 4))


# The --demo run: the seeded settings of `cryofire demo` at the sample's size (demo_overrides), with latent
# snapshots often enough to watch the states separate. zdim 2 as in the CLI demo.
GUI_DEMO_SETTINGS = dict(batch_size=32, latents_every=4_000, zdim=2)


def gui_demo_settings(n: int, box: int, num_images: int | None = None) -> dict:
    """TrainConfig fields of `cryofire gui --demo` for a sample of n particles at box `box`."""
    return dict(demo_overrides(n, box, seed=0, num_images=num_images), **GUI_DEMO_SETTINGS)
