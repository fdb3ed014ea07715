"""FedSM (Xu et al., CVPR 2022): global model, personalised models by SoftPull, and a model selector."""
