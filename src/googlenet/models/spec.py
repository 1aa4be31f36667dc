"""GoogLeNet's architecture as data: Table 1 of Szegedy et al., "Going Deeper with
Convolutions" (2014). Nothing here builds a layer; `googlenet.py` reads these rows.

Each Inception module has four branches on the same input, concatenated on channels:
    1x1 conv                        -> n1x1 channels
    1x1 conv (reduce) -> 3x3 conv   -> n3x3 channels
    1x1 conv (reduce) -> 5x5 conv   -> n5x5 channels
    3x3/1 max pool -> 1x1 conv      -> pool_proj channels
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InceptionSpec:
    """One "inception" row of Table 1 (the six channel columns)."""

    name: str  # the paper's label, e.g. "3a"
    n1x1: int
    n3x3red: int
    n3x3: int
    n5x5red: int
    n5x5: int
    pool_proj: int

    @property
    def out_channels(self) -> int:
        return self.n1x1 + self.n3x3 + self.n5x5 + self.pool_proj


#            name  #1x1  #3x3red  #3x3  #5x5red  #5x5  pool proj
INCEPTION = (
    InceptionSpec("3a", 64, 96, 128, 16, 32, 32),
    InceptionSpec("3b", 128, 128, 192, 32, 96, 64),
    # 3x3/2 max pool
    InceptionSpec("4a", 192, 96, 208, 16, 48, 64),
    InceptionSpec("4b", 160, 112, 224, 24, 64, 64),
    InceptionSpec("4c", 128, 128, 256, 24, 64, 64),
    InceptionSpec("4d", 112, 144, 288, 32, 64, 64),
    InceptionSpec("4e", 256, 160, 320, 32, 128, 128),
    # 3x3/2 max pool
    InceptionSpec("5a", 256, 160, 320, 32, 128, 128),
    InceptionSpec("5b", 384, 192, 384, 48, 128, 128),
)
INCEPTION_BY_NAME = {m.name: m for m in INCEPTION}

# Stages 3, 4 and 5 hold these modules; a 3x3/2 max pool sits before stages 2-5.
STAGES = {3: ("3a", "3b"), 4: ("4a", "4b", "4c", "4d", "4e"), 5: ("5a", "5b")}

# The stem (stages 1 and 2): 7x7/2 conv 64, max pool, LRN, 1x1 conv 64, 3x3 conv 192, LRN.
STEM_CHANNELS = (64, 64, 192)
STEM_KERNELS = (7, 1, 3)

# Auxiliary classifiers: after these modules, weighted 0.3 in the loss during training.
AUX_AFTER = ("4a", "4d")
AUX_LOSS_WEIGHT = 0.3
AUX_CONV_CHANNELS = 128  # 1x1 conv after the 5x5/3 average pool
AUX_FC_FEATURES = 1024
AUX_POOL_OUTPUT = 4  # 5x5/3 average pool of a 14x14 map -> 4x4

# Local response normalisation in the stem (Krizhevsky et al.'s form, as the paper used).
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75

DROPOUT = 0.4
DROPOUT_AUX = 0.7
FEATURES = INCEPTION[-1].out_channels  # 1024, into the classifier

# Table 1's last two columns as published, for `googlenet summary` to set beside the
# values measured from the live model at 224x224: (params in K = 1024, ops = multiply-adds
# in M). Max pools, average pool, dropout and softmax have none.
PAPER_COST = {
    "convolution 7x7/2": (2.7, 34),
    "convolution 3x3/1": (112, 360),
    "inception (3a)": (159, 128),
    "inception (3b)": (380, 304),
    "inception (4a)": (364, 73),
    "inception (4b)": (437, 88),
    "inception (4c)": (463, 100),
    "inception (4d)": (580, 119),
    "inception (4e)": (840, 170),
    "inception (5a)": (1072, 54),
    "inception (5b)": (1388, 71),
    "linear": (1000, 1),
}
