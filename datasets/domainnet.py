"""DomainNet, FedBN's 10-class subset, 6 domains, in the FedBN pickle layout (``DomainNet/<site>_{train,test}.pkl``)."""
from __future__ import annotations

from dassl.data.datasets import DATASET_REGISTRY

from .fedbn_domains import FedBNDomainDataset


@DATASET_REGISTRY.register()
class DomainNet(FedBNDomainDataset):
    dataset_dir = "DomainNet"
    SITES = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
    CLASSNAMES = ("bird", "feather", "headphones", "ice_cream", "teapot", "tiger", "whale", "windmill", "wine_glass",
                  "zebra")
    HOW_TO = ("follow FedBN's README (github.com/med-air/FedBN): download its DomainNet split pickles and the "
              "DomainNet images so that <root>/DomainNet/<site>_{train,test}.pkl and the image paths they list "
              "(relative to <root>, e.g. DomainNet/clipart/bird/...) exist")
    TEMPLATE = "a photo of a {}."
