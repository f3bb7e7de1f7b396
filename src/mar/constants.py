"""Constants shared by the data pipeline and the models."""

# ImageNet pixel statistics: the input normalisation of VideoMAE and MAR, and the
# un-normalisation before reconstruction targets are computed.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
