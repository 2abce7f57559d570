"""Hydra overrides shared by the end-to-end tests: runs of seconds on 2 CPU cores."""

#: Synthetic data: 8/4/4 images of 32x32.
SYNTHETIC_TINY = [
    "datamodule.image_size=[32,32]",
    "datamodule.num_train=8",
    "datamodule.num_val=4",
    "datamodule.num_test=4",
]
#: Synthetic data: 8 train images, 5 val/test images (an odd count, which a padding DistributedSampler would
#: repeat one image of under 2-process DDP), batch 2.
SYNTHETIC_ODD = [
    "datamodule.image_size=[32,32]",
    "datamodule.num_train=8",
    "datamodule.num_val=5",
    "datamodule.num_test=5",
    "datamodule.batch_size=2",
]
#: A U-Net of three encoder stages with narrow decoder channels.
SMALL_UNET = ["model.encoder_depth=3", "model.arch.decoder_channels=[32,16,8]"]
#: No progress bars, model summaries or prediction grids: quiet logs.
QUIET = [
    "datamodule.progress=false",
    "callbacks.rich_progress_bar=null",
    "callbacks.rich_model_summary=null",
    "callbacks.prediction_grid=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
