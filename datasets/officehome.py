"""OfficeHome (4 domains, 65 classes) in the FedBN pickle layout (``OfficeHome/<site>_{train,test}.pkl``).

Sites ``Art``, ``Clipart``, ``Product``, ``Real_World``; labels follow the sorted class-folder names of
the official release.
"""
from __future__ import annotations

from dassl.data.datasets import DATASET_REGISTRY

from .fedbn_domains import FedBNDomainDataset


@DATASET_REGISTRY.register()
class OfficeHome(FedBNDomainDataset):
    dataset_dir = "OfficeHome"
    SITES = ("Art", "Clipart", "Product", "Real_World")
    CLASSNAMES = (
        "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator", "Calendar", "Candles",
        "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp", "Drill", "Eraser", "Exit_Sign", "Fan",
        "File_Cabinet", "Flipflops", "Flowers", "Folder", "Fork", "Glasses", "Hammer", "Helmet", "Kettle", "Keyboard",
        "Knives", "Lamp_Shade", "Laptop", "Marker", "Monitor", "Mop", "Mouse", "Mug", "Notebook", "Oven", "Pan",
        "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin", "Radio", "Refrigerator", "Ruler",
        "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda", "Speaker", "Spoon", "TV", "Table", "Telephone",
        "ToothBrush", "Toys", "Trash_Can", "Webcam",
    )
    HOW_TO = ("download OfficeHomeDataset_10072016 and write <root>/OfficeHome/<site>_{train,test}.pkl for the sites "
              "Art, Clipart, Product, Real_World, each holding (image paths relative to <root>, class names)")
    TEMPLATE = "a photo of a {}."
