"""FedAvg on MedMNIST (default PathMNIST): the Flower PathMNIST simulation, done in NVIDIA FLARE.

Modules (imported one by one, so that the data preparation does not pull in MONAI):

* ``data``: read and check MedMNIST ``.npz`` files; a torch ``Dataset`` of normalised images.
* ``partition``: Flower's ``create_lda_partitions`` (Dirichlet label skew, equal sizes) and per-client val split.
* ``splits``: the per-client index files written by ``data_preparation/prepare_medmnist.py`` and read by clients.
* ``networks``: the Flower example's small CNN and MONAI's DenseNet121, behind one factory.
"""
