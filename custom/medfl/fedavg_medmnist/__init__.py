"""FedAvg on MedMNIST (default PathMNIST): the Flower PathMNIST simulation, done in NVIDIA FLARE.

Modules (imported one by one, so that data preparation and the Flower benchmark do not pull in NVFlare):

* ``data``: read and check MedMNIST ``.npz`` files; a torch ``Dataset`` of normalised images.
* ``partition``: Flower's ``create_lda_partitions`` (Dirichlet label skew, equal sizes) and per-client val split.
* ``splits``: the per-client index files written by ``data_preparation/prepare_medmnist.py`` and read by clients.
* ``networks``: the Flower example's small CNN and MONAI's DenseNet121, registered for job configs.
* ``sampling``: Flower's per-round client sampling, seeded.
* ``evaluation``: accuracy and the other classification metrics plus the mean cross-entropy of a model.
* ``executor`` / ``controller``: the NVFlare client and server of ``jobs/fedavg_medmnist``.
"""
